package traffic

import "fmt"

// EventKind is one of the rule events of DESIGN.md "Events".
type EventKind int

// The events, in the order they are delivered for one change: a release opening, the flow
// change with the drain transitions it crosses, and a release closing.
const (
	OnStart EventKind = iota + 1
	OnFlowChange
	OnExitAllBlue
	OnExitAllGreen
	OnEnterAllBlue
	OnEnterAllGreen
	OnFinish
)

func (k EventKind) String() string {
	switch k {
	case OnStart:
		return "OnStart"
	case OnFlowChange:
		return "OnFlowChange"
	case OnExitAllBlue:
		return "OnExitAllBlue"
	case OnExitAllGreen:
		return "OnExitAllGreen"
	case OnEnterAllBlue:
		return "OnEnterAllBlue"
	case OnEnterAllGreen:
		return "OnEnterAllGreen"
	case OnFinish:
		return "OnFinish"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one change of a channel's rule.
type Event struct {
	Kind    EventKind
	Channel string
	// Rule is the channel's rule after the change; zero but for Channel when the rule was
	// deleted.
	Rule Rule
	// Old and New are the effective blue percent before and after the change: the rule's
	// BluePercent while a release is open, EvenSplit (50) otherwise.
	Old, New float64
}

func (e Event) String() string {
	s := fmt.Sprintf("%s %s", e.Channel, e.Kind)
	if e.Kind == OnFlowChange {
		s = fmt.Sprintf("%s %s %g→%g", e.Channel, e.Kind, e.Old, e.New)
	}
	if e.Rule.Reason != "" {
		s += " (" + e.Rule.Reason + ")"
	}
	return s
}

// EffectivePercent is the blue percent traffic actually follows under r: BluePercent while a
// release is open, EvenSplit otherwise (a closed channel splits by base weights alone).
func EffectivePercent(r Rule) float64 {
	if r.Releasing {
		return r.BluePercent
	}
	return EvenSplit
}

// diff returns the events that take a channel from rule before to rule after; a missing
// rule (ok false) counts as closed at 50 %. Both colors' drains can change at once: going
// from 100 straight to 0 exits all-blue and enters all-green.
func diff(channel string, before Rule, hadBefore bool, after Rule, hasAfter bool) []Event {
	closed := Rule{Channel: channel, BluePercent: EvenSplit}
	if !hadBefore {
		before = closed
	}
	if !hasAfter {
		after = closed
	}
	old, cur := EffectivePercent(before), EffectivePercent(after)
	ev := func(k EventKind) Event { return Event{Kind: k, Channel: channel, Rule: after, Old: old, New: cur} }
	var out []Event
	if !before.Releasing && after.Releasing {
		out = append(out, ev(OnStart))
	}
	if old != cur {
		out = append(out, ev(OnFlowChange))
		if old == 100 {
			out = append(out, ev(OnExitAllBlue))
		}
		if old == 0 {
			out = append(out, ev(OnExitAllGreen))
		}
		if cur == 100 {
			out = append(out, ev(OnEnterAllBlue))
		}
		if cur == 0 {
			out = append(out, ev(OnEnterAllGreen))
		}
	}
	if before.Releasing && !after.Releasing {
		out = append(out, ev(OnFinish))
	}
	return out
}

// Handlers routes events to one function per kind; nil functions are skipped. Pass its
// Handle method to Client.Subscribe.
type Handlers struct {
	OnStart                         func(Event)
	OnFlowChange                    func(Event)
	OnEnterAllBlue, OnExitAllBlue   func(Event)
	OnEnterAllGreen, OnExitAllGreen func(Event)
	OnFinish                        func(Event)
}

// Handle calls the function for e's kind.
func (h Handlers) Handle(e Event) {
	var fn func(Event)
	switch e.Kind {
	case OnStart:
		fn = h.OnStart
	case OnFlowChange:
		fn = h.OnFlowChange
	case OnEnterAllBlue:
		fn = h.OnEnterAllBlue
	case OnExitAllBlue:
		fn = h.OnExitAllBlue
	case OnEnterAllGreen:
		fn = h.OnEnterAllGreen
	case OnExitAllGreen:
		fn = h.OnExitAllGreen
	case OnFinish:
		fn = h.OnFinish
	}
	if fn != nil {
		fn(e)
	}
}
