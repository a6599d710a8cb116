package traffic_test

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/traffic"
)

func TestWeightsTable(t *testing.T) {
	cases := []struct{ p, blue, green float64 }{
		{50, 100, 100},
		{1, 100.0 / 99, 100},
		{99, 100, 100.0 / 99},
		{0, 0, 100},
		{100, 100, 0},
		{25, 100.0 / 3, 100},
		{75, 100, 100.0 / 3},
		{0.1, 10.0 / 99.9, 100},
		{-5, 0, 100},           // clamped
		{150, 100, 0},          // clamped
		{math.NaN(), 100, 100}, // NaN counts as 50
	}
	for _, c := range cases {
		b, g := traffic.Weights(c.p)
		if math.Abs(b-c.blue) > 1e-9 || math.Abs(g-c.green) > 1e-9 {
			t.Errorf("Weights(%v) = %v, %v; want %v, %v", c.p, b, g, c.blue, c.green)
		}
	}
	if b, _ := traffic.Weights(1); math.Abs(b-1.0101010101) > 1e-9 {
		t.Errorf("Weights(1) blue = %v, want 1.0101…", b)
	}
}

// For every rate, one blue and one green instance split traffic rate : 100-rate.
func TestWeightsBlueShareEqualsRate(t *testing.T) {
	for i := 0; i <= 100_000; i++ {
		p := float64(i) / 1000
		b, g := traffic.Weights(p)
		if share := b / (b + g); math.Abs(share-p/100) > 1e-12 {
			t.Fatalf("rate %v: blue share %v", p, share)
		}
	}
}

func TestTrafficWeight(t *testing.T) {
	open, _ := traffic.NewRule("trade", []string{"order"}, true, 0)
	if w := traffic.TrafficWeight(open, deploy.Blue); w != 0 {
		t.Errorf("blue at 0%%: %v, want 0", w)
	}
	if w := traffic.TrafficWeight(open, deploy.Green); w != 100 {
		t.Errorf("green at 0%%: %v, want 100", w)
	}
	if w := traffic.TrafficWeight(open, deploy.None); w != 100 {
		t.Errorf("colorless: %v, want 100", w)
	}
	open.Releasing = false
	if w := traffic.TrafficWeight(open, deploy.Blue); w != 100 {
		t.Errorf("closed channel: %v, want 100", w)
	}
}

func TestRuleValidation(t *testing.T) {
	for name, c := range map[string]struct {
		channel string
		apps    []string
		p       float64
		field   string
	}{
		"no apps":       {"trade", nil, 50, "apps"},
		"bad app":       {"trade", []string{"or der"}, 50, "apps"},
		"bad channel":   {"tr/ade", []string{"order"}, 50, "channel"},
		"empty channel": {"", []string{"order"}, 50, "channel"},
		"negative":      {"trade", []string{"order"}, -0.5, "blue_percent"},
		"over 100":      {"trade", []string{"order"}, 100.01, "blue_percent"},
		"NaN":           {"trade", []string{"order"}, math.NaN(), "blue_percent"},
		"Inf":           {"trade", []string{"order"}, math.Inf(1), "blue_percent"},
	} {
		_, err := traffic.NewRule(c.channel, c.apps, true, c.p)
		var re *traffic.RuleError
		if !errors.As(err, &re) || re.Field != c.field || !errors.Is(err, traffic.ErrInvalidRule) {
			t.Errorf("%s: NewRule = %v, want a RuleError on %q", name, err, c.field)
		}
	}
	r, err := traffic.NewRule("trade", []string{"order", "inventory", "order"}, true, 0.1)
	if err != nil || strings.Join(r.Apps, ",") != "inventory,order" {
		t.Fatalf("NewRule should sort and dedupe apps: %v %v", r.Apps, err)
	}
}

func TestRuleRecord(t *testing.T) {
	design := `{"v":1,"channel":"trade","apps":["order","inventory"],"releasing":true,"blue_percent":1,
 "updated_at":"2026-11-21T10:05:00Z"}`
	r, err := traffic.Unmarshal([]byte(design))
	if err != nil {
		t.Fatal(err)
	}
	if r.Channel != "trade" || !r.Releasing || r.BluePercent != 1 || strings.Join(r.Apps, ",") != "inventory,order" {
		t.Fatalf("DESIGN.md example decoded as %+v", r)
	}
	data, err := traffic.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := traffic.Unmarshal(data)
	if err != nil || !back.Equal(r) {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	for _, bad := range []string{
		`{}`, `{"v":2,"channel":"t","apps":["a"],"releasing":true,"blue_percent":1}`,
		`{"v":1,"channel":"t","apps":["a"],"blue_percent":1}`,
		`{"v":1,"channel":"t","apps":["a"],"releasing":true}`,
		`{"v":1,"channel":"t","apps":["a"],"releasing":true,"blue_percent":101}`,
		`{"v":1,"channel":"t","apps":["a","a"],"releasing":true,"blue_percent":1}`,
		`{"v":1,"channel":"t","apps":[],"releasing":true,"blue_percent":1}`,
		`{"v":1,"channel":"t","apps":["a"],"releasing":"yes","blue_percent":1}`,
		`[`,
	} {
		if _, err := traffic.Unmarshal([]byte(bad)); !errors.Is(err, traffic.ErrMalformedRule) {
			t.Errorf("Unmarshal(%s) = %v, want ErrMalformedRule", bad, err)
		}
	}
}

// The write id "op" is an optional field of schema version 1: a record without it reads as
// Op "" (every rule written before it), a record with it keeps it through a round trip, and a
// bad one is refused like any bad field. Readers that do not know it ignore it, as they ignore
// any field they do not know: that is what makes adding it compatible (a reader of this
// version reads a record with a field from a later one).
func TestRuleRecordWriteID(t *testing.T) {
	old := `{"v":1,"channel":"trade","apps":["order"],"releasing":true,"blue_percent":1,"updated_at":"2026-11-21T10:05:00Z"}`
	r, err := traffic.Unmarshal([]byte(old))
	if err != nil || r.Op != "" {
		t.Fatalf("a record without op: %+v %v; want it read with Op \"\"", r, err)
	}
	withOp := `{"v":1,"channel":"trade","apps":["order"],"releasing":true,"blue_percent":1,"updated_at":"2026-11-21T10:05:00Z","op":"9f86d081884c7d65"}`
	r, err = traffic.Unmarshal([]byte(withOp))
	if err != nil || r.Op != "9f86d081884c7d65" {
		t.Fatalf("a record with op: %+v %v", r, err)
	}
	data, err := traffic.Marshal(r)
	if err != nil || !strings.Contains(string(data), `"op":"9f86d081884c7d65"`) {
		t.Fatalf("Marshal: %s %v; want the op written", data, err)
	}
	if back, err := traffic.Unmarshal(data); err != nil || !back.Equal(r) {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	r.Op = ""
	if data, _ := traffic.Marshal(r); strings.Contains(string(data), `"op"`) {
		t.Fatalf("a rule without op is written with one: %s", data)
	}
	later := `{"v":1,"channel":"trade","apps":["order"],"releasing":true,"blue_percent":1,"op":"x","a_later_field":{"n":1}}`
	if _, err := traffic.Unmarshal([]byte(later)); err != nil {
		t.Fatalf("a record with a field this reader does not know: %v; want it read", err)
	}
	for _, op := range []string{"has space", strings.Repeat("a", traffic.MaxOpLen+1), "é"} {
		bad := `{"v":1,"channel":"t","apps":["a"],"releasing":true,"blue_percent":1,"op":"` + op + `"}`
		var re *traffic.RuleError
		if _, err := traffic.Unmarshal([]byte(bad)); !errors.Is(err, traffic.ErrMalformedRule) || !errors.As(err, &re) || re.Field != "op" {
			t.Errorf("op %q: %v; want ErrMalformedRule on op", op, err)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte(`{"v":1,"channel":"trade","apps":["order","inventory"],"releasing":true,"blue_percent":1,"updated_at":"2026-11-21T10:05:00Z"}`))
	f.Add([]byte(`{"v":1,"channel":"t","apps":["a"],"releasing":false,"blue_percent":0.1}`))
	f.Add([]byte(`{"v":1,"channel":"t","apps":["b","a"],"releasing":true,"blue_percent":1e-300}`))
	f.Add([]byte(`{"v":1,"channel":"t","apps":["a"],"releasing":true,"blue_percent":-0}`))
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{"v":1,"channel":"t","apps":["a"],"releasing":true,"blue_percent":10,"reason":"release step 2 (10 %)"}`))
	f.Add([]byte(`{"v":1,"channel":"t","apps":["a"],"releasing":true,"blue_percent":10,"reason":"a\u0000b"}`))
	f.Add([]byte(`{"v":1,"channel":"t","apps":["a"],"releasing":true,"blue_percent":10,"op":"9f86d081884c7d65"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := traffic.Unmarshal(data)
		if err != nil {
			if !errors.Is(err, traffic.ErrMalformedRule) {
				t.Fatalf("error does not wrap ErrMalformedRule: %v", err)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid rule: %v", err)
		}
		again, err := traffic.Marshal(r)
		if err != nil {
			t.Fatalf("cannot re-encode an accepted rule: %v", err)
		}
		back, err := traffic.Unmarshal(again)
		if err != nil || !back.Equal(r) {
			t.Fatalf("round trip changed the rule: %+v -> %+v (%v)", r, back, err)
		}
	})
}

func TestDiff(t *testing.T) {
	rule := func(open bool, p float64) traffic.Rule {
		return traffic.Rule{Channel: "trade", Apps: []string{"order"}, Releasing: open, BluePercent: p}
	}
	kinds := func(evs []traffic.Event) string {
		var s []string
		for _, e := range evs {
			s = append(s, e.Kind.String())
		}
		return strings.Join(s, " ")
	}
	cases := []struct {
		name   string
		before traffic.Rule
		had    bool
		after  traffic.Rule
		has    bool
		want   string
	}{
		{"open", traffic.Rule{}, false, rule(true, 50), true, "OnStart"},
		{"drain blue", rule(true, 50), true, rule(true, 0), true, "OnFlowChange OnEnterAllGreen"},
		{"canary", rule(true, 0), true, rule(true, 1), true, "OnFlowChange OnExitAllGreen"},
		{"shift", rule(true, 1), true, rule(true, 10), true, "OnFlowChange"},
		{"all blue", rule(true, 50), true, rule(true, 100), true, "OnFlowChange OnEnterAllBlue"},
		{"100 to 0", rule(true, 100), true, rule(true, 0), true, "OnFlowChange OnExitAllBlue OnEnterAllGreen"},
		{"finish from 100", rule(true, 100), true, rule(false, 50), true, "OnFlowChange OnExitAllBlue OnFinish"},
		{"open straight at 0", traffic.Rule{}, false, rule(true, 0), true, "OnStart OnFlowChange OnEnterAllGreen"},
		{"deleted while drained", rule(true, 0), true, traffic.Rule{}, false, "OnFlowChange OnExitAllGreen OnFinish"},
		{"no change", rule(true, 10), true, rule(true, 10), true, ""},
		{"closed rule percent ignored", rule(false, 50), true, rule(false, 0), true, ""},
	}
	for _, c := range cases {
		got := kinds(traffic.Diff("trade", c.before, c.had, c.after, c.has))
		if got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
