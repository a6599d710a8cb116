package traffic

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/internal/record"
)

// schemaVersion is the "v" field of the rule records this package writes and reads.
const schemaVersion = 1

// EvenSplit is the blue percent of a channel with no release open: blue and green share
// traffic by their base weights alone.
const EvenSplit = 50

// Rule is a release channel's traffic rule (DESIGN.md "Rule record").
type Rule struct {
	// Channel names the release channel: letters, digits, '.', '_', '-'; at most 128.
	Channel string
	// Apps are the apps released together in this channel, sorted, no duplicates.
	Apps []string
	// Releasing is whether a release is open.
	Releasing bool
	// BluePercent is blue's share of traffic in [0, 100]; fractions allowed (0.1 is a
	// 0.1 % canary). 0 drains blue, 100 drains green.
	BluePercent float64
	// UpdatedAt is when the rule was last written.
	UpdatedAt time.Time
	// Reason says who wrote the rule's last change and why, e.g. "release step 2 (10 %):
	// step 1 passed, blue 0.1 % errors over 2,114 requests"; empty when the writer gave none.
	// At most MaxReasonLen bytes of printable UTF-8. Set with the Reason write option.
	Reason string
	// Op identifies the Controller call that wrote the rule's last change: 16 hex digits,
	// random per call and the same in every retry of it, so that a call whose answer from
	// etcd was lost and that finds its own Op knows its write was applied, and one that finds
	// another knows someone else changed the rule. Empty in rules written by hand or by
	// switchyard before it was added; at most MaxOpLen bytes of printable ASCII without spaces.
	Op string
}

// MaxOpLen bounds Rule.Op.
const MaxOpLen = 64

// MaxReasonLen bounds Rule.Reason: a sentence for people, not a payload.
const MaxReasonLen = 512

// Equal reports whether two rules have the same content.
func (r Rule) Equal(o Rule) bool {
	return r.Channel == o.Channel && slices.Equal(r.Apps, o.Apps) && r.Releasing == o.Releasing &&
		r.BluePercent == o.BluePercent && r.UpdatedAt.Equal(o.UpdatedAt) && r.Reason == o.Reason && r.Op == o.Op
}

// Has reports whether app is in the channel.
func (r Rule) Has(app string) bool {
	_, ok := slices.BinarySearch(r.Apps, app)
	return ok
}

// ErrInvalidRule is wrapped by every validation error of a rule.
var ErrInvalidRule = errors.New("traffic: invalid rule")

// RuleError says which field of a rule is wrong and why.
type RuleError struct {
	Field string // the JSON name of the field, e.g. "blue_percent"
	Value string // the offending value, as written
	Rule  string // what the value must be
}

func (e *RuleError) Error() string {
	return fmt.Sprintf("traffic: invalid rule: %s %s: %s", e.Field, e.Value, e.Rule)
}

// Is makes errors.Is(err, ErrInvalidRule) true.
func (e *RuleError) Is(target error) bool { return target == ErrInvalidRule }

// validatePercent checks a blue percent: finite, in [0, 100].
func validatePercent(p float64) error {
	if math.IsNaN(p) || math.IsInf(p, 0) || p < 0 || p > 100 {
		return &RuleError{Field: "blue_percent", Value: strconv.FormatFloat(p, 'g', -1, 64),
			Rule: "must be a finite number from 0 to 100 (0 drains blue, 100 drains green)"}
	}
	return nil
}

// Validate checks the rule against DESIGN.md and returns the first violation as a
// *RuleError. Apps must be sorted and unique: NewRule does that for you.
func (r Rule) Validate() error {
	if err := deploy.ValidateName("channel", r.Channel); err != nil {
		return &RuleError{Field: "channel", Value: strconv.Quote(r.Channel), Rule: ruleOf(err)}
	}
	if len(r.Apps) == 0 {
		return &RuleError{Field: "apps", Value: "[]", Rule: "must name at least one app"}
	}
	for i, app := range r.Apps {
		if err := deploy.ValidateName("app", app); err != nil {
			return &RuleError{Field: "apps", Value: strconv.Quote(app), Rule: ruleOf(err)}
		}
		if i > 0 && r.Apps[i-1] >= app {
			return &RuleError{Field: "apps", Value: strconv.Quote(app), Rule: "must be sorted and name each app once"}
		}
	}
	if err := validateReason(r.Reason); err != nil {
		return err
	}
	if err := validateOp(r.Op); err != nil {
		return err
	}
	return validatePercent(r.BluePercent)
}

// validateOp checks a rule's write id: at most MaxOpLen bytes of printable ASCII, no spaces.
func validateOp(op string) error {
	if len(op) > MaxOpLen {
		return &RuleError{Field: "op", Value: strconv.Quote(op[:32]) + "…", Rule: fmt.Sprintf("is %d bytes long; at most %d are allowed", len(op), MaxOpLen)}
	}
	for i := 0; i < len(op); i++ {
		if op[i] <= ' ' || op[i] > '~' {
			return &RuleError{Field: "op", Value: strconv.Quote(op), Rule: "must be printable ASCII without spaces"}
		}
	}
	return nil
}

// validateReason checks a rule's reason: printable UTF-8, at most MaxReasonLen bytes.
func validateReason(reason string) error {
	switch {
	case len(reason) > MaxReasonLen:
		return &RuleError{Field: "reason", Value: strconv.Quote(reason[:32]) + "…",
			Rule: fmt.Sprintf("is %d bytes long; at most %d are allowed: say who and why in a sentence", len(reason), MaxReasonLen)}
	case !utf8.ValidString(reason):
		return &RuleError{Field: "reason", Value: strconv.Quote(reason), Rule: "must be UTF-8 text"}
	}
	for _, c := range reason {
		if !unicode.IsPrint(c) {
			return &RuleError{Field: "reason", Value: strconv.Quote(reason), Rule: fmt.Sprintf("has %q; use printable text on one line", c)}
		}
	}
	return nil
}

// ruleOf returns the rule part of a deploy.NameError.
func ruleOf(err error) string {
	var fe *deploy.NameError
	if errors.As(err, &fe) {
		return fe.Rule
	}
	return err.Error()
}

// NewRule returns a valid rule with apps sorted and deduplicated, or a *RuleError.
func NewRule(channel string, apps []string, releasing bool, bluePercent float64) (Rule, error) {
	sorted := slices.Clone(apps)
	slices.Sort(sorted)
	r := Rule{Channel: channel, Apps: slices.Compact(sorted), Releasing: releasing, BluePercent: bluePercent}
	return r, r.Validate()
}

// stored is the stored JSON form, kept apart from Rule.
type stored struct {
	record.Header
	Channel     string    `json:"channel"`
	Apps        []string  `json:"apps"`
	Releasing   *bool     `json:"releasing"`
	BluePercent *float64  `json:"blue_percent"`
	UpdatedAt   time.Time `json:"updated_at"`
	Reason      string    `json:"reason,omitempty"`
	// Op was added to version 1 as an optional field: readers that do not know it ignore it
	// (encoding/json skips unknown fields), and a rule without it reads as Op "".
	Op string `json:"op,omitempty"`
}

// Marshal validates r and encodes it as the stored JSON record.
func Marshal(r Rule) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	rel, p := r.Releasing, r.BluePercent
	return json.Marshal(stored{Header: record.Header{V: schemaVersion}, Channel: r.Channel, Apps: r.Apps, Releasing: &rel,
		BluePercent: &p, UpdatedAt: r.UpdatedAt.UTC(), Reason: r.Reason, Op: r.Op})
}

// ErrMalformedRule is wrapped by Unmarshal's errors for a value that is not a valid rule.
var ErrMalformedRule = errors.New("traffic: malformed rule record")

// Unmarshal decodes and validates a stored rule. Every field is required; apps are accepted
// in any order and returned sorted, but not with duplicates.
func Unmarshal(data []byte) (Rule, error) {
	var rec stored
	if err := record.Decode(data, schemaVersion, &rec, false); err != nil {
		return Rule{}, malformed(err)
	}
	switch {
	case rec.Releasing == nil:
		return Rule{}, malformed(errors.New(`"releasing" is missing`))
	case rec.BluePercent == nil:
		return Rule{}, malformed(errors.New(`"blue_percent" is missing`))
	}
	apps := slices.Clone(rec.Apps)
	slices.Sort(apps)
	r := Rule{Channel: rec.Channel, Apps: apps, Releasing: *rec.Releasing, BluePercent: *rec.BluePercent, UpdatedAt: rec.UpdatedAt, Reason: rec.Reason, Op: rec.Op}
	if err := r.Validate(); err != nil {
		return Rule{}, malformed(err)
	}
	return r, nil
}

// malformed wraps why a stored rule was refused under ErrMalformedRule.
func malformed(err error) error { return record.Malformed(ErrMalformedRule, "traffic: ", err) }

// Weights returns the per-instance color weights (base 100) that give blue a share of
// bluePercent/100 when one blue and one green instance compete, so that
// W/(100+W) = percent/100 (DESIGN.md "The weight formula"):
//
//	percent 50: 100, 100;  < 50: 100·p/(100−p), 100;  > 50: 100, 100·(100−p)/p
//	percent 0: 0, 100 (blue drained);  100: 100, 0 (green drained)
//
// A percent outside [0, 100] is clamped; NaN counts as 50.
func Weights(bluePercent float64) (blue, green float64) {
	p := bluePercent
	switch {
	case math.IsNaN(p):
		p = EvenSplit
	case p < 0:
		p = 0
	case p > 100:
		p = 100
	}
	switch {
	case p == EvenSplit:
		return 100, 100
	case p < EvenSplit:
		return 100 * p / (100 - p), 100
	default:
		return 100, 100 * (100 - p) / p
	}
}

// TrafficWeight is the traffic_weight an instance of color c writes for its app's rule: its
// color's weight while a release is open, DefaultWeight (100) otherwise or when colorless.
func TrafficWeight(r Rule, c deploy.Color) float64 {
	if !r.Releasing {
		return deploy.DefaultWeight
	}
	blue, green := Weights(r.BluePercent)
	switch c {
	case deploy.Blue:
		return blue
	case deploy.Green:
		return green
	}
	return deploy.DefaultWeight
}
