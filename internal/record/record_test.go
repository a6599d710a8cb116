package record_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/record"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type thing struct {
	record.Header
	Name string `json:"name"`
}

func TestDecode(t *testing.T) {
	var r thing
	if err := record.Decode([]byte(`{"v":1,"name":"a"}`), 1, &r, false); err != nil || r.Name != "a" || r.V != 1 {
		t.Fatalf("a good record: %+v, %v", r, err)
	}
	for _, c := range []struct {
		in      string
		accept0 bool
		say     string // "" for no error
	}{
		{`{"v":2,"name":"a"}`, false, "newer than the 1 this reader knows: a newer switchyard wrote it"},
		{`{"name":"a"}`, false, `"v":0, this reader knows 1`},
		{`{"name":"a"}`, true, ""},
		{`garbage`, false, `value "garbage" is not a JSON record`},
		{`{"v":"1"}`, false, "is not a JSON record"},
	} {
		var r thing
		err := record.Decode([]byte(c.in), 1, &r, c.accept0)
		if (c.say == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.say) {
			t.Errorf("Decode(%s, accept0 %v) = %v; want %q", c.in, c.accept0, err, c.say)
		}
	}
}

func TestEncodeCarriesTheVersion(t *testing.T) {
	b, err := jsonMarshal(thing{Header: record.Header{V: 3}, Name: "x"})
	if err != nil || b != `{"v":3,"name":"x"}` {
		t.Fatalf("encoded %s, %v", b, err)
	}
}

func TestMalformed(t *testing.T) {
	kind := errors.New("pkg: malformed thing")
	cause := errors.New("pkg: name is required")
	err := record.Malformed(kind, "pkg: ", cause)
	if err.Error() != "pkg: malformed thing: name is required" || !errors.Is(err, kind) || !errors.Is(err, cause) {
		t.Fatalf("Malformed: %q", err)
	}
	if s := record.Snippet([]byte(strings.Repeat("x", 100))); !strings.HasSuffix(s, `"…`) || len(s) > 70 {
		t.Fatalf("Snippet of 100 bytes: %s", s)
	}
}

func jsonMarshal(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}
