package registry_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/registry"
)

func validInstance() registry.Record {
	return registry.Record{
		ID: "order-7d9f", App: "order", Addr: "10.0.3.7:9000", Color: deploy.Blue,
		Version: "v2", Channel: "trade", Weight: 100, TrafficWeight: 1.0101,
		StartTime: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), Warmup: time.Minute,
		Metadata: map[string]string{"zone": "a"},
	}
}

func TestValidateNamesTheFieldAndRule(t *testing.T) {
	cases := []struct {
		name  string
		mod   func(*registry.Record)
		field string
		rule  string
	}{
		{"no app", func(i *registry.Record) { i.App = "" }, "app", "required"},
		{"slash in app", func(i *registry.Record) { i.App = "a/b" }, "app", "'/'"},
		{"dotdot id", func(i *registry.Record) { i.ID = ".." }, "id", `".."`},
		{"long id", func(i *registry.Record) { i.ID = strings.Repeat("x", 129) }, "id", "at most 128"},
		{"space in id", func(i *registry.Record) { i.ID = "a b" }, "id", "' '"},
		{"no port", func(i *registry.Record) { i.Addr = "10.0.0.1" }, "addr", "host:port"},
		{"no host", func(i *registry.Record) { i.Addr = ":9000" }, "addr", "no host"},
		{"wildcard", func(i *registry.Record) { i.Addr = "0.0.0.0:9000" }, "addr", "wildcard"},
		{"bad port", func(i *registry.Record) { i.Addr = "h:99999" }, "addr", "1 to 65535"},
		{"bad color", func(i *registry.Record) { i.Color = "red" }, "color", `"blue", "green"`},
		{"bad channel", func(i *registry.Record) { i.Channel = "t/x" }, "channel", "'/'"},
		{"negative weight", func(i *registry.Record) { i.Weight = -1 }, "weight", "finite number >= 0"},
		{"NaN traffic weight", func(i *registry.Record) { i.TrafficWeight = math.NaN() }, "traffic_weight", "finite"},
		{"Inf weight", func(i *registry.Record) { i.Weight = math.Inf(1) }, "weight", "finite"},
		{"negative warmup", func(i *registry.Record) { i.Warmup = -time.Second }, "warmup_ms", "negative"},
		{"admin without port", func(i *registry.Record) { i.Admin = "10.0.3.7" }, "admin", "host:port"},
		{"wildcard admin", func(i *registry.Record) { i.Admin = "[::]:8081" }, "admin", "wildcard"},
		{"admin port 0", func(i *registry.Record) { i.Admin = "10.0.3.7:0" }, "admin", "1 to 65535"},
		{"long degraded", func(i *registry.Record) { i.Degraded = strings.Repeat("x", 513) }, "degraded", "at most 512"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := validInstance()
			c.mod(&in)
			err := in.Validate()
			if !errors.Is(err, registry.ErrInvalidInstance) {
				t.Fatalf("Validate() = %v, want ErrInvalidInstance", err)
			}
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field != c.field {
				t.Fatalf("Validate() = %v, want a FieldError for %q", err, c.field)
			}
			if !strings.Contains(err.Error(), c.rule) {
				t.Fatalf("error %q does not state the rule (%q)", err, c.rule)
			}
			if _, err := registry.Marshal(in); !errors.Is(err, registry.ErrInvalidInstance) {
				t.Fatalf("Marshal accepted an invalid instance: %v", err)
			}
		})
	}
	if err := validInstance().Validate(); err != nil {
		t.Fatalf("valid instance refused: %v", err)
	}
}

func TestRecordRoundTripAndDesignExample(t *testing.T) {
	in := validInstance()
	data, err := registry.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"v", "id", "app", "addr", "color", "version", "channel", "weight", "traffic_weight", "start_time", "warmup_ms", "metadata"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("stored record has no %q field: %s", k, data)
		}
	}
	if fields["v"] != 1.0 || fields["warmup_ms"] != 60000.0 {
		t.Errorf("v or warmup_ms wrong: %s", data)
	}
	out, err := registry.Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if !out.Equal(in) {
		t.Fatalf("round trip changed the record:\n in %+v\nout %+v", in, out)
	}
	if _, ok := fields["degraded"]; ok {
		t.Errorf("a healthy record stores degraded: %s", data)
	}
	in.Degraded = "no serving blue instance of inventory"
	if data, err = registry.Marshal(in); err != nil {
		t.Fatal(err)
	}
	if out, err = registry.Unmarshal(data); err != nil || !out.Equal(in) {
		t.Fatalf("degraded did not round trip (%v): %s -> %+v", err, data, out)
	}

	if _, ok := fields["admin"]; ok {
		t.Errorf("a record without an admin server stores admin: %s", data)
	}
	in.Admin = "10.0.3.7:8081"
	if data, err = registry.Marshal(in); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"admin":"10.0.3.7:8081"`) {
		t.Errorf("admin not stored as \"admin\": %s", data)
	}
	if out, err = registry.Unmarshal(data); err != nil || !out.Equal(in) {
		t.Fatalf("admin did not round trip (%v): %s -> %+v", err, data, out)
	}
	other := in
	other.Admin = "10.0.3.7:8082"
	if other.Equal(in) {
		t.Errorf("Equal ignores Admin")
	}

	// The example of DESIGN.md decodes as written.
	design := `{"v":1,"id":"order-7d9f","app":"order","addr":"10.0.3.7:9000","color":"blue","version":"v2",
 "channel":"trade","weight":100,"traffic_weight":100,"start_time":"2026-11-21T10:00:00Z",
 "warmup_ms":60000,"metadata":{"zone":"a"}}`
	got, err := registry.Unmarshal([]byte(design))
	if err != nil {
		t.Fatal(err)
	}
	if got.Warmup != time.Minute || got.Metadata["zone"] != "a" || got.TrafficWeight != 100 {
		t.Fatalf("DESIGN.md example decoded wrong: %+v", got)
	}
}

func TestUnmarshalDefaultsAndRefusals(t *testing.T) {
	got, err := registry.Unmarshal([]byte(`{"v":1,"id":"a","app":"x","addr":"h:1"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got.Weight != 100 || got.TrafficWeight != 100 {
		t.Fatalf("missing weights should read as 100, got %v and %v", got.Weight, got.TrafficWeight)
	}
	zero, err := registry.Unmarshal([]byte(`{"v":1,"id":"a","app":"x","addr":"h:1","weight":0,"traffic_weight":0}`))
	if err != nil || zero.Weight != 0 || zero.TrafficWeight != 0 {
		t.Fatalf("explicit zero weights must stay zero (a drained color): %+v %v", zero, err)
	}
	for _, bad := range []string{
		``, `null`, `[]`, `{"v":2,"id":"a","app":"x","addr":"h:1"}`, `{"id":"a","app":"x","addr":"h:1"}`,
		`{"v":1,"id":"a","app":"x","addr":"nope"}`, `{"v":1,"id":"a","app":"x","addr":"h:1","weight":-3}`,
		`{"v":1,"id":"a","app":"x","addr":"h:1","warmup_ms":-1}`, `{"v":1,"id":"a","app":"x","addr":"h:1","warmup_ms":9223372036854775807}`,
	} {
		if _, err := registry.Unmarshal([]byte(bad)); !errors.Is(err, registry.ErrMalformedRecord) {
			t.Errorf("Unmarshal(%q) = %v, want ErrMalformedRecord", bad, err)
		}
	}
}

// FuzzUnmarshal: the decoder never panics, and whatever it accepts is valid and survives a
// round trip unchanged.
func FuzzUnmarshal(f *testing.F) {
	good, _ := registry.Marshal(validInstance())
	f.Add(good)
	f.Add([]byte(`{"v":1,"id":"a","app":"x","addr":"h:1"}`))
	f.Add([]byte(`{"v":1,"id":"a","app":"x","addr":"[::1]:9","weight":1e308,"traffic_weight":0}`))
	f.Add([]byte(`{"v":1,"id":"a","app":"x","addr":"h:1","start_time":"bad"}`))
	f.Add([]byte(`{"v":1,"id":"a","app":"x","addr":"h:1","color":"red"}`))
	f.Add([]byte(`{"v":1,"metadata":{"k":1}}`))
	f.Add([]byte(`{"v":1,"id":"a","app":"x","addr":"h:1","admin":"h:8081"}`))
	f.Add([]byte(`{"v":1,"id":"a","app":"x","addr":"h:1","admin":":8081"}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := registry.Unmarshal(data)
		if err != nil {
			if !errors.Is(err, registry.ErrMalformedRecord) {
				t.Fatalf("error does not wrap ErrMalformedRecord: %v", err)
			}
			return
		}
		if err := in.Validate(); err != nil {
			t.Fatalf("accepted an invalid record: %v", err)
		}
		again, err := registry.Marshal(in)
		if err != nil {
			t.Fatalf("cannot re-encode an accepted record: %v", err)
		}
		back, err := registry.Unmarshal(again)
		if err != nil {
			t.Fatalf("cannot decode own encoding %s: %v", again, err)
		}
		if !back.Equal(in) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", in, back)
		}
	})
}

func TestMalformedErrorKeepsTheFieldError(t *testing.T) {
	_, err := registry.Unmarshal([]byte(`{"v":1,"id":"a","app":"x","addr":"h:0"}`))
	var fe *registry.FieldError
	if !errors.As(err, &fe) || fe.Field != "addr" {
		t.Fatalf("Unmarshal error %v does not carry the FieldError", err)
	}
	want := `registry: malformed instance record: invalid instance: addr "h:0": port must be a number from 1 to 65535`
	if err.Error() != want {
		t.Fatalf("error text\n got %q\nwant %q", err, want)
	}
}

// Issue 12 case 7: weights up to MaxFloat64 passed validation, and two at 1e308 overflowed
// the picker's running total.
func TestWeightsAreBounded(t *testing.T) {
	ok := registry.Record{App: "order", ID: "o-1", Addr: "127.0.0.1:9001", Weight: 100, TrafficWeight: 100}
	for _, w := range []float64{0, 1, registry.MaxWeight} {
		in := ok
		in.Weight, in.TrafficWeight = w, w
		if err := in.Validate(); err != nil {
			t.Errorf("weight %g: %v", w, err)
		}
	}
	for _, tc := range []struct {
		field string
		set   func(*registry.Record, float64)
	}{
		{"weight", func(in *registry.Record, w float64) { in.Weight = w }},
		{"traffic_weight", func(in *registry.Record, w float64) { in.TrafficWeight = w }},
	} {
		for _, w := range []float64{registry.MaxWeight * 1.5, 1e308, math.MaxFloat64, math.Inf(1), math.NaN(), -1} {
			in := ok
			tc.set(&in, w)
			err := in.Validate()
			var fe *registry.FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), "1e+06") {
				t.Errorf("%s %g: Validate = %v; want a FieldError on %s naming the bound", tc.field, w, err, tc.field)
			}
		}
	}
	if _, err := registry.Unmarshal([]byte(`{"v":1,"id":"o-1","app":"order","addr":"127.0.0.1:9001","color":"","channel":"","weight":1e308,"traffic_weight":100,"start_time":"2026-01-01T00:00:00Z","warmup_ms":0}`)); !errors.Is(err, registry.ErrMalformedRecord) {
		t.Errorf("a stored record with weight 1e308 was accepted: %v", err)
	}
}
