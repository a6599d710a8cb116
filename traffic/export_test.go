package traffic

// SetRandom replaces the source of c's stickiness decisions (uniform in [0, 1), called
// concurrently), so a test can check the decision rate deterministically. Call it before c
// makes any decision.
func SetRandom(c *Rules, f func() float64) { c.random = f }

// ParseDecisions and Diff are exported for the tests of package traffic_test.
var (
	ParseDecisions = parseDecisions
	Diff           = diff
)
