// Package mqtest is the conformance test every mq adapter runs against its real broker:
// blue/green isolation across a drain, and no loss across a broker outage. The drains are set
// by hand (deploy.ManualDrains), as lifecycle's Instance sets them at a rule change (tested
// in lifecycle), so the tests need no etcd.
//
// The tests wait for events, never for a fixed time: a consumer's groups, a count of
// messages handled, and at the end a barrier after which no handling can still come (see
// TestIsolationAcrossADrain).
//
// It has no Example: its functions take a *testing.T. The adapters' tests show its use, e.g.
// mq/natsjs: mqtest.TestIsolationAcrossADrain(t, newBroker, mqtest.Settled(...)).
package mqtest
