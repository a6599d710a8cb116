package deploy

// The etcd key layout (DESIGN.md "etcd key layout"). Everything lives under a prefix,
// DefaultPrefix unless configured:
//
//	<prefix>/services/<app>/<instance-id>   an instance's record (on the instance's lease)
//	<prefix>/channels/<channel>             a release channel's rule
//	<prefix>/jobs/<job>/...                 a sharded job's coordination
//	<prefix>/rollouts/<channel>             a channel's release plan progress (package release)
//	<prefix>/rollouts/<channel>/lock        the runner driving it (on the runner's lease)
//
// The functions below build these keys; every package and the CLI use them, so the layout is
// written once.

// AppPrefix is the prefix of app's instance records.
func AppPrefix(prefix, app string) string { return prefix + "/services/" + app + "/" }

// InstanceKey is the key of one instance's record.
func InstanceKey(prefix, app, id string) string { return AppPrefix(prefix, app) + id }

// ChannelsPrefix is the prefix of every channel's rule.
func ChannelsPrefix(prefix string) string { return prefix + "/channels/" }

// ChannelKey is the key of channel's rule.
func ChannelKey(prefix, channel string) string { return ChannelsPrefix(prefix) + channel }

// JobPrefix is the prefix of job's coordination keys.
func JobPrefix(prefix, job string) string { return prefix + "/jobs/" + job + "/" }

// RolloutsPrefix is the prefix of every channel's release progress and runner lock.
func RolloutsPrefix(prefix string) string { return prefix + "/rollouts/" }

// RolloutKey is the key of channel's release progress record.
func RolloutKey(prefix, channel string) string { return RolloutsPrefix(prefix) + channel }

// RolloutLockKey is the key that names the runner driving channel's release; it lives on the
// runner's lease, so it goes when the runner does.
func RolloutLockKey(prefix, channel string) string { return RolloutKey(prefix, channel) + "/lock" }
