package job

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-go/switchyard/deploy"
)

// The assignment and executor records are read from etcd, where anyone with write access
// to the prefix can put anything. The fuzz targets run their seeds in the normal suite; run
// them for longer with go test -fuzz FuzzDecodeAssignment ./job/ (or FuzzDecodeExecutor).

// checkDecodeError fails t unless err is a clear error of this package and v is the zero
// value.
func checkDecodeError[T any](t *testing.T, v T, err error) {
	t.Helper()
	msg := err.Error()
	if !strings.HasPrefix(msg, "job: ") || len(msg) < len("job: ")+10 {
		t.Fatalf("error %q does not say, with the package prefix, what was wrong", msg)
	}
	var zero T
	if !reflect.DeepEqual(v, zero) {
		t.Fatalf("an error came with a value: %+v", v)
	}
}

func FuzzDecodeAssignment(f *testing.F) {
	for _, seed := range []string{
		`{"v":1,"version":1,"items":{"blue-1":[0,2],"green-1":[1,3]}}`,
		`{"v":1,"version":7,"items":{}}`,
		`{"v":1,"version":3}`,
		`{"v":1,"version":3,"items":null}`,
		`{"v":1,"version":2,"items":{"a":[]},"extra":true}`,
		`{"V":1,"Version":2,"Items":{"a":[1]}}`,
		`{"v":2,"version":1,"items":{}}`,
		`{"v":1,"version":0,"items":{}}`,
		`{"v":1,"version":-5,"items":{}}`,
		`{"v":1,"version":1,"items":{"a":[8]}}`,
		`{"v":1,"version":1,"items":{"a":[-1]}}`,
		`{"v":1,"version":1,"items":{"a":[1],"b":[1]}}`,
		`{"v":1,"version":1,"items":{"a":[1,1]}}`,
		`{"v":1,"version":1,"items":{"a/b":[1]}}`,
		`{"v":1,"version":1,"items":{"":[1]}}`,
		`{"v":1,"version":1,"items":{"a":[1e300]}}`,
		`{"v":1,"version":1,"items":{"a":[9223372036854775808]}}`,
		`{"v":1,"version":1,"items":{"a":"0"}}`,
		`{"v":1,"version":1,"items":[0,1]}`,
		`{"v":1`, `null`, `[]`, `""`, ``, "\xff\xfe", `{"v":1,"version":1,"items":{"a":[0]}}garbage`,
	} {
		f.Add("", []byte(seed), uint16(8))
	}
	f.Add("-old", []byte(`{"v":1,"version":1,"items":{}}`), uint16(8))
	f.Add("", []byte(`{"v":1,"version":1,"items":{"a":[0]}}`), uint16(0))
	f.Fuzz(func(t *testing.T, name string, val []byte, n16 uint16) {
		n := max(1, int(n16%1024))
		a, err := decodeAssignment(name, val, n)
		if err != nil {
			checkDecodeError(t, a, err)
			return
		}
		// What was accepted keeps the promises the executors rely on...
		if name != "" || a.V != 1 || a.Version < 1 {
			t.Fatalf("accepted %+v at %q", a, name)
		}
		owner := map[int]string{}
		for id, its := range a.Items {
			if deploy.ValidateName("id", id) != nil {
				t.Fatalf("accepted executor id %q", id)
			}
			for _, it := range its {
				if it < 0 || it >= n {
					t.Fatalf("accepted item %d of a job of %d items", it, n)
				}
				if o, ok := owner[it]; ok {
					t.Fatalf("accepted item %d given to %s and %s", it, o, id)
				}
				owner[it] = id
			}
		}
		// ...and round-trips: what a leader would write of it decodes to the same.
		out, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := decodeAssignment("", out, n)
		if err != nil {
			t.Fatalf("%s (from %q) does not decode again: %v", out, val, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("round trip: %+v became %+v", a, b)
		}
	})
}

func FuzzDecodeExecutor(f *testing.F) {
	for _, seed := range []struct{ id, val string }{
		{"blue-1", `{"id":"blue-1","color":"blue"}`},
		{"green-1", `{"id":"green-1","color":"green"}`},
		{"x", `{"id":"x","color":""}`},
		{"x", `{"id":"x"}`},
		{"x", `{"ID":"x","Color":"blue","more":[1,2]}`},
		{"x", `{"id":"y","color":"blue"}`},
		{"x", `{"id":"x","color":"red"}`},
		{"x", `{"id":"x","color":7}`},
		{"a/b", `{"id":"a/b","color":"blue"}`},
		{"", `{"id":"","color":"blue"}`},
		{"..", `{"id":"..","color":"blue"}`},
		{strings.Repeat("a", 200), `{"id":"` + strings.Repeat("a", 200) + `"}`},
		{"x", `{"id":"x"`}, {"x", `null`}, {"x", `[]`}, {"x", ``}, {"x", "\xff"},
	} {
		f.Add(seed.id, []byte(seed.val))
	}
	f.Fuzz(func(t *testing.T, id string, val []byte) {
		r, err := decodeExecutor(id, val)
		if err != nil {
			checkDecodeError(t, r, err)
			return
		}
		if r.ID != id || deploy.ValidateName("id", r.ID) != nil || !deploy.Color(r.Color).Valid() {
			t.Fatalf("accepted %+v at executors/%s", r, id)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeExecutor(id, out)
		if err != nil || back != r {
			t.Fatalf("round trip: %+v became %+v, %v", r, back, err)
		}
	})
}

// Records no executor writes are refused with an error that says what is wrong.
func TestDecodeErrorsSayWhatIsWrong(t *testing.T) {
	for _, c := range []struct {
		name, val, want string
	}{
		{"", `{"v":1`, "malformed assignment"},
		{"", `{"v":2,"version":1}`, `"v":2 is newer`},
		{"", `{"v":1,"version":0}`, "version 0"},
		{"", `{"v":1,"version":1,"items":{"a":[8]}}`, "item 8 to a; this job has items 0..7"},
		{"", `{"v":1,"version":1,"items":{"a":[1],"b":[1]}}`, "item 1 to both a and b"},
		{"", `{"v":1,"version":1,"items":{"a/b":[1]}}`, `invalid executor id "a/b"`},
		{"x", `{"v":1,"version":1}`, `"assignmentx"`},
	} {
		_, err := decodeAssignment(c.name, []byte(c.val), 8)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("assignment %q at %q: %v; want an error with %q", c.val, c.name, err, c.want)
		}
	}
	for _, c := range []struct {
		id, val, want string
	}{
		{"x", `{"id":"x"`, "malformed executor record at executors/x"},
		{"x", `{"id":"y"}`, `names executor "y"`},
		{"x", `{"id":"x","color":"red"}`, `color "red"`},
		{"a b", `{"id":"a b"}`, `invalid executor id "a b"`},
	} {
		_, err := decodeExecutor(c.id, []byte(c.val))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("executor record %q at %q: %v; want an error with %q", c.val, c.id, err, c.want)
		}
	}
}
