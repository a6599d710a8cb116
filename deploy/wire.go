package deploy

// DefaultPrefix is the etcd key prefix everything lives under unless configured otherwise.
const DefaultPrefix = "/switchyard"

// DefaultWeight is an instance's base weight (capacity), and the traffic weight of an
// instance whose app is in no open release channel.
const DefaultWeight = 100

// Scheme is the gRPC resolver scheme: dial "switchyard:///<app>".
const Scheme = "switchyard"

// OfflineHeader is the response metadata ("x-switchyard-offline: 1", header and trailer) by
// which a draining instance tells each caller to stop picking it.
const OfflineHeader = "x-switchyard-offline"

// BaggageKey is the OpenTelemetry baggage member that carries sticky decisions:
// <channel>=<color> pairs joined by '&', e.g. "trade=blue&pay=green".
const BaggageKey = "x-deploy-channel-type"

// ColorHeader is the message header with the color of the instance that produced a message.
const ColorHeader = "x-deploy-color"
