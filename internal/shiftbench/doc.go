// Package shiftbench measures how fast a traffic shift reaches every consumer (issue 14): N
// instances in two apps of one release channel, each app half blue and half green, and M
// consumers, each a gRPC ClientConn to switchyard:///<app> through registry's resolver and
// switchyard_weighted, half of them calling each app. It has no code outside its tests.
//
// Everything runs in one process on an embedded etcd (internal/etcdtest):
//
//   - Each instance is a real registry.Registrar with its own traffic rule client, and re-puts
//     its record's channel and traffic_weight when the rule changes, as lifecycle's onEvent
//     does (lifecycle itself is not used: its admin server, TCP listeners and the process-wide
//     reach board would add nothing but noise and file descriptors). Each instance serves the
//     greeter on an in-memory listener (grpc's bufconn); consumers dial it through a context
//     dialer, so 1,000 instances × 50 consumers (25,000 connections) need no file descriptors.
//   - Each consumer has its own etcd client and, in the "rules" mode, its own traffic.Rules
//     passed to the resolver as registry.ResolverConfig.Rules, so its picker takes the split
//     from the rule; in the "records" mode it waits for the instances' re-puts.
//   - A consumer's switchyard_weighted balancer is built inside a test-only wrapping policy
//     that sees every resolver state it accepts and every picker it sends.
//
// A shift is Controller.Shift between 20 % and 80 % blue, so every instance's traffic weight
// changes (25 ↔ 100). For each shift the harness reports:
//
//   - applied: from Shift returning until every consumer's balancer has sent a picker built
//     from a resolver state in which every endpoint carries the new traffic weight (its
//     balancer.EndpointInfo), i.e. whose undecided and sticky picks follow the new split (the
//     smoke test checks that by sampling picks). A consumer that applies before Shift returns
//     counts 0.
//   - settled: until every instance has re-put its record (asking again until the write is
//     done, where lifecycle leaves a failure to the Registrar's background retry) and every
//     consumer has seen the records (with Rules a consumer sends no state for a re-put, so
//     only the writes are waited for).
//   - CPU: the process's user+system CPU (getrusage) from before Shift to settled: embedded
//     etcd, the instances' rule clients and re-puts, and every consumer.
//   - pickers: the pickers each consumer connection sent from Shift to settled (rebuilds).
//
// The default `go test` runs only a small smoke version (8 instances, 2 consumers, both
// modes). The figures come from the benchmarks, one fleet per sub-benchmark, built once
// (outside the timer) and reused across the benchmark's runs; b.N is the number of shifts:
//
//	go test -run '^$' -bench 'Shift/200x20' -benchtime 20x ./internal/shiftbench/
//	go test -run '^$' -bench 'Shift/1000x50' -benchtime 8x -timeout 60m ./internal/shiftbench/
//
// Each sub-benchmark reports p50-ms and p99-ms (applied, over the b.N shifts of the last run),
// settle-p50-ms, cpu-ms/shift and pickers/conn/shift (the mean over connections; the maximum
// is logged). The rules mode is skipped when registry.ResolverConfig has no Rules field.
package shiftbench
