// Package window keeps an instance's golden signals for the last minute, in memory: one
// bucket per second of requests, errors, crossings, a latency histogram with fixed bounds,
// and the work its components did (messages handled, job items run). lifecycle feeds it from
// the interceptors every instance runs and serves it read-only as JSON on the admin server
// (GET /stats); the dashboard (`switchyard dashboard`, `switchyard top`) polls the instances
// of a channel and merges their windows: the latency buckets are the same everywhere, so
// percentiles merge across instances.
//
// Recording takes no lock and allocates nothing: each second's bucket is claimed with an
// atomic compare-and-swap of its second, and counts are atomic adds. A reader takes a
// Snapshot, a plain value that encodes to JSON and merges with others.
package window
