package deploy_test

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/switchyard-go/switchyard/deploy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestManualDrainsTellsChangesOnly(t *testing.T) {
	m := deploy.NewManualDrains(deploy.Green)
	if m.Color() != deploy.Green {
		t.Fatalf("color %q", m.Color())
	}
	d, changed := m.Drained()
	if d != (deploy.Drain{}) {
		t.Fatalf("a new ManualDrains has %+v drained", d)
	}
	m.Set(deploy.Drain{}) // no change
	select {
	case <-changed:
		t.Fatal("a Set that changes nothing closed the channel")
	default:
	}
	m.Set(deploy.Drain{Green: true})
	select {
	case <-changed:
	default:
		t.Fatal("a change did not close the channel")
	}
	if d, _ := m.Drained(); !d.Of(deploy.Green) || d.Of(deploy.Blue) || d.Of(deploy.None) {
		t.Fatalf("after Set(Green): %+v", d)
	}
}

// Concurrent Sets and readers: a closed channel is never handed out again (a reader that
// waited reads the state anew and waits on a new channel), and the last Set wins.
func TestManualDrainsConcurrent(t *testing.T) {
	m := deploy.NewManualDrains(deploy.Blue)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				m.Set(deploy.Drain{Blue: (i+w)%2 == 0, Green: i%3 == 0})
			}
		}()
	}
	errs := make(chan string, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				_, changed := m.Drained()
				select {
				case <-changed:
					if _, next := m.Drained(); next == changed {
						errs <- "Drained handed out a channel that is already closed"
						return
					}
				default:
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	m.Set(deploy.Drain{Green: true})
	if d, _ := m.Drained(); d != (deploy.Drain{Green: true}) {
		t.Fatalf("last Set lost: %+v", d)
	}
}

func TestColors(t *testing.T) {
	for _, c := range []struct {
		in    string
		want  deploy.Color
		other deploy.Color
	}{{"blue", deploy.Blue, deploy.Green}, {"green", deploy.Green, deploy.Blue}, {"", deploy.None, deploy.None}} {
		got, err := deploy.ParseColor(c.in)
		if err != nil || got != c.want || got.Other() != c.other {
			t.Errorf("ParseColor(%q) = %q, %v; Other %q", c.in, got, err, got.Other())
		}
	}
	if _, err := deploy.ParseColor("Blue"); err == nil || !strings.Contains(err.Error(), "use blue, green") {
		t.Errorf("ParseColor(Blue): %v", err)
	}
}

func TestValidateName(t *testing.T) {
	for _, c := range []struct{ name, say string }{
		{"", "is required"},
		{".", `must not be "." or ".."`},
		{"..", `must not be "." or ".."`},
		{"a b", "has ' ' at byte 1"},
		{strings.Repeat("x", deploy.MaxNameLen+1), "at most 128"},
	} {
		err := deploy.ValidateName("channel", c.name)
		var ne *deploy.NameError
		if !errors.Is(err, deploy.ErrInvalidName) || !errors.As(err, &ne) || ne.Field != "channel" || !strings.Contains(err.Error(), c.say) {
			t.Errorf("ValidateName(%q) = %v; want an ErrInvalidName saying %q", c.name, err, c.say)
		}
	}
	for _, ok := range []string{"order", "a.b_c-9", strings.Repeat("x", deploy.MaxNameLen)} {
		if err := deploy.ValidateName("app", ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
}

func TestKeyLayout(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{deploy.InstanceKey(deploy.DefaultPrefix, "order", "order-1"), "/switchyard/services/order/order-1"},
		{deploy.AppPrefix("/p", "order"), "/p/services/order/"},
		{deploy.ChannelKey(deploy.DefaultPrefix, "trade"), "/switchyard/channels/trade"},
		{deploy.ChannelsPrefix("/p"), "/p/channels/"},
		{deploy.JobPrefix("/p", "settle"), "/p/jobs/settle/"},
		{deploy.RolloutKey("/p", "trade"), "/p/rollouts/trade"},
		{deploy.RolloutLockKey("/p", "trade"), "/p/rollouts/trade/lock"},
	} {
		if c.got != c.want {
			t.Errorf("key %q, want %q", c.got, c.want)
		}
	}
}
