package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"strconv"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/record"
)

// MaxWeight bounds Weight and TrafficWeight. A consumer's picker multiplies the two and sums
// them over an app's endpoints; with both at most 1e6 (10 000 times the default, far beyond
// any real capacity ratio) the sum stays many orders of magnitude below float64's range and
// exact enough, where weights near MaxFloat64 overflowed it to +Inf.
const MaxWeight = 1e6

// schemaVersion is the "v" field of the instance records this package writes and reads.
const schemaVersion = 1

// Record is one running process of an app, as registered in etcd (DESIGN.md "Record
// record"). Treat a received Record as read-only: its Metadata map may be shared.
type Record struct {
	// ID identifies the instance within its app: letters, digits, '.', '_', '-'; at most
	// 128 characters. Required.
	ID string
	// App is the name of the app (service) the instance provides. Same characters as ID.
	// Required.
	App string
	// Addr is the host:port consumers dial. Required.
	Addr string
	// Color is blue, green or none. Default none.
	Color deploy.Color
	// Version is a free-form version label, e.g. "v2". Optional.
	Version string
	// Channel is the release channel the app is in, "" when it is in no open channel.
	// Written by the instance itself from the channel's rule.
	Channel string
	// Weight is the operator's base weight (capacity). Finite, >= 0 and <= MaxWeight (1e6);
	// a Registrar registers 0 as deploy.DefaultWeight (100).
	Weight float64
	// TrafficWeight is the color weight from the channel's rule (DESIGN.md "The weight
	// formula"). Finite, >= 0 and <= MaxWeight (1e6). It only has meaning inside a channel: an instance with an
	// empty Channel is always written with deploy.DefaultWeight.
	TrafficWeight float64
	// StartTime is when the instance started; consumers ramp its weight up from here.
	// A Registrar sets it to the registration time when zero.
	StartTime time.Time
	// Warmup is how long the weight ramps up after StartTime; 0 means no warmup.
	Warmup time.Duration
	// Metadata is free-form, e.g. {"zone": "a"}.
	Metadata map[string]string
	// Degraded, when not empty, says why the instance cannot keep requests of its color on
	// its color further down the chain (e.g. "no serving blue instance of inventory"):
	// lifecycle sets it while an app of its channel that it calls has no serving instance of
	// its color, and clears it when one serves again. Consumers then send it no request
	// decided for its color, so the chain's entry routes those to the other color
	// (DESIGN.md "Faults"). At most MaxDegradedLen bytes.
	Degraded string
	// Admin is the host:port of the instance's admin HTTP server (probes, /status, and
	// /stats, the window the dashboard polls), "" when not known. lifecycle sets it to the
	// host of Addr and its admin listener's port. Validated like Addr when set.
	Admin string
	// Epoch identifies one registration: the etcd create revision of the instance's key,
	// set by the Watcher (and so the resolver) from etcd, not stored in the record. It
	// changes with every new registration (Register after Deregister, or after a lost
	// lease), not with Update, so a consumer can tell a new registration from an unchanged
	// record. Ignored when registering; 0 in a Registrar's own record.
	Epoch int64
}

// Equal reports whether two instances have the same content.
func (in Record) Equal(o Record) bool {
	return in.ID == o.ID && in.App == o.App && in.Addr == o.Addr && in.Color == o.Color &&
		in.Version == o.Version && in.Channel == o.Channel && in.Weight == o.Weight &&
		in.TrafficWeight == o.TrafficWeight && in.StartTime.Equal(o.StartTime) &&
		in.Warmup == o.Warmup && maps.Equal(in.Metadata, o.Metadata) && in.Epoch == o.Epoch &&
		in.Degraded == o.Degraded && in.Admin == o.Admin
}

// ErrInvalidInstance is returned (wrapped, as a *FieldError) when an instance record breaks a
// rule of DESIGN.md. Branch with errors.Is; read the field with errors.As.
var ErrInvalidInstance = errors.New("registry: invalid instance")

// FieldError says which field of an instance record is wrong and why.
type FieldError struct {
	Field string // the JSON name of the field, e.g. "addr"
	Value string // the offending value, quoted as written
	Rule  string // what the value must be
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("registry: invalid instance: %s %s: %s", e.Field, e.Value, e.Rule)
}

// Is makes errors.Is(err, ErrInvalidInstance) true.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidInstance }

// MaxDegradedLen bounds Instance.Degraded: a reason for people, not a payload.
const MaxDegradedLen = 512

// validName checks a name with deploy.ValidateName and reports a refusal as a *FieldError, so
// that a record's bad name is an ErrInvalidInstance like its other fields.
func validName(field, name string) error {
	var ne *deploy.NameError
	if err := deploy.ValidateName(field, name); errors.As(err, &ne) {
		return &FieldError{Field: ne.Field, Value: ne.Value, Rule: ne.Rule}
	} else if err != nil {
		return err
	}
	return nil
}

// Validate checks every field against DESIGN.md and returns the first violation as a
// *FieldError.
func (in Record) Validate() error {
	if err := validName("app", in.App); err != nil {
		return err
	}
	if err := validName("id", in.ID); err != nil {
		return err
	}
	if err := validateAddr("addr", in.Addr); err != nil {
		return err
	}
	if in.Admin != "" {
		if err := validateAddr("admin", in.Admin); err != nil {
			return err
		}
	}
	if !in.Color.Valid() {
		return &FieldError{Field: "color", Value: strconv.Quote(string(in.Color)), Rule: `must be "blue", "green" or "" (none)`}
	}
	if in.Channel != "" {
		if err := validName("channel", in.Channel); err != nil {
			return err
		}
	}
	if err := validateWeight("weight", in.Weight); err != nil {
		return err
	}
	if err := validateWeight("traffic_weight", in.TrafficWeight); err != nil {
		return err
	}
	if len(in.Degraded) > MaxDegradedLen {
		return &FieldError{Field: "degraded", Value: strconv.Quote(in.Degraded[:16] + "…"),
			Rule: fmt.Sprintf("is %d bytes long; at most %d are allowed", len(in.Degraded), MaxDegradedLen)}
	}
	if in.Warmup < 0 {
		return &FieldError{Field: "warmup_ms", Value: strconv.FormatInt(in.Warmup.Milliseconds(), 10), Rule: "must not be negative"}
	}
	return nil
}

// validateAddr checks an address others dial (field "addr" or "admin"): host:port, with a
// host that is not a wildcard and a port from 1 to 65535.
func validateAddr(field, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &FieldError{Field: field, Value: strconv.Quote(addr), Rule: `must be "host:port", e.g. "10.0.3.7:9000" or "[::1]:9000"`}
	}
	if host == "" {
		return &FieldError{Field: field, Value: strconv.Quote(addr), Rule: "has no host; register the address others can dial, not a wildcard listen address"}
	}
	if host == "0.0.0.0" || host == "::" {
		return &FieldError{Field: field, Value: strconv.Quote(addr), Rule: "is a wildcard address; register the address others can dial"}
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return &FieldError{Field: field, Value: strconv.Quote(addr), Rule: "port must be a number from 1 to 65535"}
	}
	return nil
}

func validateWeight(field string, w float64) error {
	if math.IsNaN(w) || w < 0 || w > MaxWeight {
		return &FieldError{Field: field, Value: strconv.FormatFloat(w, 'g', -1, 64),
			Rule: "must be a finite number >= 0 and <= 1e+06 (MaxWeight; 100 is normal): consumers sum weights, and larger ones overflow the sum"}
	}
	return nil
}

// stored is the stored JSON form (DESIGN.md "Instance record"), kept apart from Instance so the
// public type can evolve without changing what is in etcd.
type stored struct {
	record.Header
	ID            string            `json:"id"`
	App           string            `json:"app"`
	Addr          string            `json:"addr"`
	Color         string            `json:"color"`
	Version       string            `json:"version,omitempty"`
	Channel       string            `json:"channel"`
	Weight        *float64          `json:"weight"`
	TrafficWeight *float64          `json:"traffic_weight"`
	StartTime     time.Time         `json:"start_time"`
	WarmupMS      int64             `json:"warmup_ms"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Degraded      string            `json:"degraded,omitempty"`
	Admin         string            `json:"admin,omitempty"`
}

// Marshal validates in and encodes it as the stored JSON record.
func Marshal(in Record) ([]byte, error) {
	if err := in.Validate(); err != nil {
		return nil, err
	}
	w, tw := in.Weight, in.TrafficWeight
	return json.Marshal(stored{
		Header: record.Header{V: schemaVersion}, ID: in.ID, App: in.App, Addr: in.Addr, Color: string(in.Color),
		Version: in.Version, Channel: in.Channel, Weight: &w, TrafficWeight: &tw,
		StartTime: in.StartTime.UTC(), WarmupMS: in.Warmup.Milliseconds(), Metadata: in.Metadata,
		Degraded: in.Degraded, Admin: in.Admin,
	})
}

// ErrMalformedRecord is wrapped by Unmarshal's errors for a value that is not a valid
// instance record.
var ErrMalformedRecord = errors.New("registry: malformed instance record")

// Unmarshal decodes and validates a stored instance record. A missing weight or
// traffic_weight reads as deploy.DefaultWeight. Records of another schema version are refused.
func Unmarshal(data []byte) (Record, error) {
	var r stored
	if err := record.Decode(data, schemaVersion, &r, false); err != nil {
		return Record{}, malformed(err)
	}
	if r.WarmupMS < 0 || r.WarmupMS > math.MaxInt64/int64(time.Millisecond) {
		return Record{}, fmt.Errorf("%w: warmup_ms %d is out of range", ErrMalformedRecord, r.WarmupMS)
	}
	in := Record{
		ID: r.ID, App: r.App, Addr: r.Addr, Color: deploy.Color(r.Color), Version: r.Version,
		Channel: r.Channel, Weight: deploy.DefaultWeight, TrafficWeight: deploy.DefaultWeight,
		StartTime: r.StartTime, Warmup: time.Duration(r.WarmupMS) * time.Millisecond, Metadata: r.Metadata,
		Degraded: r.Degraded, Admin: r.Admin,
	}
	if r.Weight != nil {
		in.Weight = *r.Weight
	}
	if r.TrafficWeight != nil {
		in.TrafficWeight = *r.TrafficWeight
	}
	if err := in.Validate(); err != nil {
		return Record{}, malformed(err)
	}
	return in, nil
}

// unmarshalAt decodes the record stored under the instance key of app and id (id is the
// key's last part, which may be anything a user wrote): it is malformed unless the key names
// an instance and the record is that instance's.
func unmarshalAt(app, id string, val []byte) (Record, error) {
	if err := validName("id", id); err != nil {
		return Record{}, malformed(errors.New("key does not name an instance: want <prefix>/services/<app>/<id>"))
	}
	in, err := Unmarshal(val)
	if err == nil && (in.App != app || in.ID != id) {
		err = malformed(fmt.Errorf("record says app %q id %q but is stored under app %q id %q", in.App, in.ID, app, id))
	}
	return in, err
}

// malformed wraps why a stored record was refused under ErrMalformedRecord.
func malformed(err error) error { return record.Malformed(ErrMalformedRecord, "registry: ", err) }

// withDefaults fills what a registration leaves zero: Weight 0 → deploy.DefaultWeight, and an
// instance in no channel always carries TrafficWeight deploy.DefaultWeight (DESIGN.md).
func (in Record) withDefaults() Record {
	if in.Weight == 0 {
		in.Weight = deploy.DefaultWeight
	}
	if in.Channel == "" {
		in.TrafficWeight = deploy.DefaultWeight
	}
	in.Metadata = maps.Clone(in.Metadata)
	return in
}
