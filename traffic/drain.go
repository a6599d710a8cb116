package traffic

import "github.com/switchyard-go/switchyard/deploy"

// DrainOf is which colors rule r drains: blue at an effective blue percent (EffectivePercent)
// of 0, green at 100, so exactly the color whose TrafficWeight is 0. A rule with no release
// open drains nothing, and so does the zero Rule: pass it for an app in no open channel.
// lifecycle's Instance tells its components (deploy.Drains) what DrainOf says of its app's
// rule.
func DrainOf(r Rule) deploy.Drain {
	p := EffectivePercent(r)
	return deploy.Drain{Blue: p <= 0, Green: p >= 100}
}
