package reach

import (
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func waitClosed(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testutil.Deadline):
		t.Fatal("no change of the board")
	}
}

func TestUnserved(t *testing.T) {
	a, b, c := new(Entry), new(Entry), new(Entry)
	t.Cleanup(func() { a.Close(); b.Close(); c.Close() })
	for _, e := range []*Entry{a, b, c} {
		e.Use("order/blue-1")
	}

	ch := Changed()
	a.Set(View{App: "inventory", Channel: "trade", Serving: [2]bool{false, true}})
	waitClosed(t, ch)
	if got := Unserved("trade", "blue", "order/blue-1"); !slices.Equal(got, []string{"inventory"}) {
		t.Fatalf("Unserved(trade, blue) = %v, want [inventory]", got)
	}
	if got := Unserved("trade", "green", "order/blue-1"); len(got) != 0 {
		t.Fatalf("Unserved(trade, green) = %v, want none", got)
	}
	if got := Unserved("other", "blue", "order/blue-1"); len(got) != 0 {
		t.Fatalf("Unserved(other, blue) = %v: views of another channel count", got)
	}

	// A second connection to the same app that reaches blue: blue serves.
	b.Set(View{App: "inventory", Channel: "trade", Serving: [2]bool{true, true}})
	if got := Unserved("trade", "blue", "order/blue-1"); len(got) != 0 {
		t.Fatalf("Unserved(trade, blue) = %v with a connection reaching blue", got)
	}
	b.Close()

	// An app neither color serves is not the color's fault.
	c.Set(View{App: "pay", Channel: "trade"})
	if got := Unserved("trade", "blue", "order/blue-1"); !slices.Equal(got, []string{"inventory"}) {
		t.Fatalf("Unserved(trade, blue) = %v, want [inventory] only", got)
	}

	// Setting the same view again is no change.
	ch = Changed()
	a.Set(View{App: "inventory", Channel: "trade", Serving: [2]bool{false, true}})
	select {
	case <-ch:
		t.Fatal("an unchanged view woke Changed")
	default:
	}
	a.Close()
	waitClosed(t, ch)
	if got := Unserved("trade", "blue", "order/blue-1"); len(got) != 0 {
		t.Fatalf("Unserved(trade, blue) = %v after the entry closed", got)
	}
}

// A connection counts for an instance only once a call of that instance's own color used it:
// another instance of the process does not see it.
func TestUnservedIsScopedByUse(t *testing.T) {
	e := new(Entry)
	t.Cleanup(e.Close)
	e.Set(View{App: "inventory", Channel: "trade", Serving: [2]bool{false, true}})
	if got := Unserved("trade", "blue", "order/blue-1"); len(got) != 0 {
		t.Fatalf("Unserved = %v before order/blue-1 used the connection", got)
	}
	ch := Changed()
	e.Use("order/blue-1")
	waitClosed(t, ch)
	e.Use("order/blue-1") // again: no change
	if got := Unserved("trade", "blue", "order/blue-1"); !slices.Equal(got, []string{"inventory"}) {
		t.Fatalf("Unserved for the user = %v, want [inventory]", got)
	}
	if got := Unserved("trade", "blue", "gateway/g-1"); len(got) != 0 {
		t.Fatalf("Unserved for another instance = %v, want none", got)
	}
}
