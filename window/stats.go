package window

// StatsPath is where an instance's admin server serves its Stats (GET, read-only, like
// /status).
const StatsPath = "/stats"

// Stats is what an instance's admin server answers at StatsPath: who it is, what state it is
// in, and its window. The dashboard polls it once a second.
type Stats struct {
	App      string   `json:"app"`
	ID       string   `json:"id"`
	Color    string   `json:"color"`   // blue, green or "" (none)
	Version  string   `json:"version"` // the app version it runs, e.g. v2
	Channel  string   `json:"channel"` // the release channel its app is in, "" if none
	Addr     string   `json:"addr"`    // the gRPC address it registered
	State    string   `json:"state"`   // lifecycle's state: starting, serving, draining, drained, stopped…
	InFlight int64    `json:"in_flight"`
	Window   Snapshot `json:"window"`
}
