package lifecycle

import (
	"fmt"

	"github.com/switchyard-go/switchyard/deploy"
	"github.com/switchyard-go/switchyard/traffic"
)

// The Instance is the drains of its app for its components (an mq.Consumer, a job.Executor):
// build them with it as their Drains and Append them.
var _ deploy.Drains = (*Instance)(nil)

// Append adds components to the instance, after those appended before: they are started in
// order once the instance is registered (and again by Online), and stopped in reverse while
// it drains, after their in-flight work. A component that also implements EventHandler
// receives the rule events of the app's channel while it runs.
//
// Call it before Start (or Run), typically with components built with the Instance as their
// deploy.Drains. It panics once Start has begun, as gRPC's RegisterService does after Serve: a
// component appended then would never start, and the work it should consume would wait
// unseen. It panics on a nil component too.
func (i *Instance) Append(c ...Component) {
	for k, x := range c {
		if x == nil {
			panic(fmt.Sprintf("lifecycle: Append: component %d is nil", k))
		}
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state != StateNew {
		panic(fmt.Sprintf("lifecycle: Append on an instance that is %s; append components before Start or Run", i.state))
	}
	i.comps = append(i.comps, c...)
}

// Color is the instance's color (Config.Color). With Drained, it makes the Instance the
// deploy.Drains its components follow.
func (i *Instance) Color() deploy.Color { return i.cfg.Color }

// Drained is which colors of the app are drained by the rule of the open channel the app is
// in (traffic.DrainOf: blue at blue percent 0, green at 100; nothing when the app is in no
// open channel), and a channel closed at their next change. Before Start has loaded the
// rules it reports nothing drained and a channel closed at that load; the components start
// after it, so they see the rule from their first look. After Offline it keeps the last rule
// seen. It takes no lock (deploy.Drains).
func (i *Instance) Drained() (deploy.Drain, <-chan struct{}) {
	select {
	case <-i.loaded:
		return i.drains.Drained()
	default:
		return deploy.Drain{}, i.loaded
	}
}

// drainOf is what the rule client says of the app's drains now.
func (i *Instance) drainOf(rules *traffic.Rules) deploy.Drain {
	r, _ := rules.ChannelOf(i.cfg.App) // the zero Rule, which drains nothing, if in no open channel
	return traffic.DrainOf(r)
}
