// Package dashboard shows a release as it happens: for each app of a channel, per color,
// requests/s, error %, p50/p99, in-flight, crossings, mq and job work and the instances by
// state; the split the rule asks for next to the split observed; each instance's load
// relative to its color's mean, so an overloaded node stands out; and the rule's events as
// a timeline. `switchyard dashboard` serves it as a live web page and `switchyard top` prints
// it in a terminal; both are this package.
//
// # Where the figures come from
//
// Every lifecycle instance keeps its last minute of signals in a window.Window and serves it
// read-only at window.StatsPath (GET /stats) on its admin server, whose address its registry
// record carries (registry.Record.Admin). A Dashboard follows the rules with a
// traffic.Rules client (so it gets the events as they happen) and, every Config.Poll (1 s),
// reads each shown app's instance records with registry.List (one etcd read per app: always
// current, and no watcher to start and stop as a rule's apps change) and every instance's
// /stats, all in parallel, each bounded by Config.Timeout (800 ms). An instance that does not
// answer in time, refuses, or has no admin address in its record is shown as "no answer"
// with the reason; it never holds up the others, and a poll lasts at most about twice
// Timeout. If etcd does not answer, each app keeps the instances of its last successful read
// and says so (App.Error): the dashboard keeps showing the release while etcd is down.
//
// Aggregate turns a rule and the samples of one poll into a Channel view; it is a pure
// function. Figures cover Span, the last ten complete seconds of each instance's window:
// rates are per second over those ten seconds; the error % counts requests with a
// server-side failure status (lifecycle decides which); p50 and p99 come from the latency
// buckets of the color's instances added together (the buckets are the same everywhere, so
// they merge); the observed split is blue's share of the requests blue and green served;
// in-flight is the instances' current count. An instance is, in this order of precedence: no
// answer; offline (it answered, but lifecycle's state is not serving: starting, draining,
// drained); drained (its color gets 0 % under the rule); warming (within StartTime + Warmup
// of its record); ready. Its load is its requests/s over the mean of its color's serving
// instances; from HotLoad (150 %) it is flagged Hot.
//
// # The page and the JSON API
//
// Handler serves the page at GET / (one HTML file with its CSS and JS, embedded with
// go:embed; no build step), the current View at GET /api/view, and a View per poll as
// Server-Sent Events at GET /api/events ("data: <View JSON>"); the page follows the events
// and falls back to polling /api/view. Every number on the page is text in an element with a
// data-field attribute inside elements with data-channel, data-app, data-color and
// data-instance attributes, the number alone (its unit outside; "–" when there is none), so a
// browser test reads them directly. The split bar of app a is id="split-a", with
// id="observed-a" and id="target-a" (blue percent); a color's card is
// .card[data-app=a][data-color=c] with fields rps, error_percent, p50_ms, p99_ms, in_flight,
// crossings_ps, messages_ps, job_runs_ps, ready, warming, offline, drained_instances,
// no_answer; an instance row is tr[data-instance=id] (data-state, class "hot") with state,
// rps, error_percent, p99_ms, in_flight, crossings_ps, load, or reason when it did not
// answer; the timeline is id="events-<channel>". body[data-view-at] changes with every View.
//
// Snapshot returns the last View and Updated announces the next one, for other renderings
// (`switchyard top` is one).
//
// # The polling alone
//
// Collector is the Dashboard's polling without the view: Collector.Poll reads the given
// apps' instance records and every instance's /stats, in parallel and bounded by
// Config.Timeout as above, and returns a Sample per instance. Package release judges the
// steps of a release on it.
package dashboard
