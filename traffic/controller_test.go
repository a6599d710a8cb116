package traffic_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard-go/switchyard/internal/etcdtest"
	"github.com/switchyard-go/switchyard/traffic"
)

// One garbage key under channels/ holds up only what it may decide: Shift, Finish and Get of
// other channels proceed (they change no membership), Open refuses an app the key may name,
// naming the key, and an operation on the garbage key's own channel refuses, naming it.
func TestAGarbageRuleBlocksOnlyWhatItMayName(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctl := newController(t, cli)
	ctx := context.Background()
	if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
		t.Fatal(err)
	}
	for key, val := range map[string]string{
		"/switchyard/channels/junk": "\x00garbage",
		"/switchyard/channels/next": `{"v":2,"channel":"next","apps":["stock"],"releasing":true}`,
	} {
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
	}
	// The release in flight goes on: the operator can drain and finish it.
	if r, err := ctl.Shift(ctx, "trade", 0); err != nil || r.BluePercent != 0 {
		t.Fatalf("Shift of an open channel beside a garbage key = %+v, %v; want it done", r, err)
	}
	if r, err := ctl.Get(ctx, "trade"); err != nil || r.BluePercent != 0 {
		t.Fatalf("Get of a readable channel beside a garbage key = %+v, %v", r, err)
	}
	if r, err := ctl.Finish(ctx, "trade"); err != nil || r.Releasing {
		t.Fatalf("Finish of an open channel beside a garbage key = %+v, %v; want it done", r, err)
	}
	// Open needs "an app is in at most one open channel" across every rule: a key whose apps
	// cannot be read may name any app, one whose apps can be read only those.
	refusedNaming := func(what string, err error, key string) {
		t.Helper()
		if !errors.Is(err, traffic.ErrMalformedRule) || !strings.HasPrefix(err.Error(), "traffic: ") || !strings.Contains(err.Error(), key) ||
			!strings.Contains(err.Error(), "delete") {
			t.Fatalf("%s = %v; want a traffic error wrapping ErrMalformedRule that names %s and says how to delete it", what, err, key)
		}
	}
	_, err := ctl.Open(ctx, "trade", []string{"order"})
	refusedNaming("Open beside a key whose apps cannot be read", err, "/switchyard/channels/junk")
	for _, op := range []struct {
		name string
		do   func() error
	}{
		{"Shift", func() error { _, err := ctl.Shift(ctx, "junk", 10); return err }},
		{"Finish", func() error { _, err := ctl.Finish(ctx, "junk"); return err }},
		{"Open", func() error { _, err := ctl.Open(ctx, "junk", []string{"x"}); return err }},
		{"Get", func() error { _, err := ctl.Get(ctx, "junk"); return err }},
	} {
		refusedNaming(op.name+" of the garbage key's own channel", op.do(), "/switchyard/channels/junk")
	}
	if _, err := cli.Delete(ctx, "/switchyard/channels/junk"); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Open(ctx, "trade", []string{"order"}); err != nil {
		t.Fatalf("Open of apps a \"v\":2 key does not name: %v", err)
	}
	_, err = ctl.Open(ctx, "inv", []string{"stock"})
	refusedNaming("Open of an app a \"v\":2 key names", err, "/switchyard/channels/next")
}

// Scan shows every readable rule next to the keys that are not; Delete removes a broken key
// or a closed rule, refuses an open release unless forced, and deletes only what it read.
func TestScanAndDelete(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctl := newController(t, cli)
	ctx := context.Background()
	for _, ch := range []string{"pay", "trade"} {
		if _, err := ctl.Open(ctx, ch, []string{ch + "-app"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ctl.Finish(ctx, "pay"); err != nil {
		t.Fatal(err)
	}
	for key, val := range map[string]string{
		"/switchyard/channels/junk":  "\x00garbage",
		"/switchyard/channels/a b":   `{"v":1,"channel":"a b","apps":["x"],"releasing":false,"blue_percent":50}`,
		"/switchyard/channels/stale": `{"v":1,"channel":"trade","apps":["x"],"releasing":false,"blue_percent":50}`,
	} {
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
	}
	rules, bad, err := ctl.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rules {
		got = append(got, r.Channel)
	}
	for _, u := range bad {
		if !errors.Is(u.Err, traffic.ErrMalformedRule) || u.Key != "/switchyard/channels/"+u.Channel {
			t.Fatalf("unreadable %+v: want its key and an error wrapping ErrMalformedRule", u)
		}
		got = append(got, "bad:"+u.Channel)
	}
	if g, w := strings.Join(got, ","), "pay,trade,bad:a b,bad:junk,bad:stale"; g != w {
		t.Fatalf("Scan = %s, want %s", g, w)
	}
	if _, err := ctl.List(ctx); !errors.Is(err, traffic.ErrMalformedRule) || !strings.Contains(err.Error(), "/switchyard/channels/a b") {
		t.Fatalf("List with unreadable keys = %v; want it strict, naming the first key", err)
	}

	// An open release is not deleted by accident: that would end it without a Finish.
	if err := ctl.Delete(ctx, "trade", false); !errors.Is(err, traffic.ErrAlreadyOpen) || !strings.Contains(err.Error(), "finish it first") {
		t.Fatalf("Delete of an open release = %v, want ErrAlreadyOpen saying to finish it first", err)
	}
	if err := ctl.Delete(ctx, "nope", false); !errors.Is(err, traffic.ErrUnknownChannel) {
		t.Fatalf("Delete of a missing key = %v, want ErrUnknownChannel", err)
	}
	for _, ch := range []string{"junk", "a b", "stale", "pay"} { // broken, badly named, misfiled, closed
		if err := ctl.Delete(ctx, ch, false); err != nil {
			t.Fatalf("Delete %q: %v", ch, err)
		}
	}
	if err := ctl.Delete(ctx, "trade", true); err != nil {
		t.Fatalf("forced Delete of an open release: %v", err)
	}
	if resp, err := cli.Get(ctx, "/switchyard/channels/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("keys left under channels/: %v %v", resp, err)
	}
}
