// Package etcdtest runs real, embedded etcd for tests and examples: a single node (Server) or
// a cluster of three or five members (Cluster).
//
// The server listens on unix sockets in a private temporary directory and clients reach it
// through a small TCP proxy on a loopback port. The proxy is what makes outages sharp: Stop
// first cuts every client connection (so the embedded server does not wait for open watch
// streams to finish) and then stops etcd; Start brings etcd back on the same sockets and data
// and reopens the proxy on the same port. Clients keep their endpoint across the outage.
//
// Cluster runs its members in one process, each with a client endpoint and a peer endpoint
// behind proxies of its own: members can be stopped as in a crash (Stop cuts their client and
// peer connections, then stops raft without handing leadership over), restarted on their data
// and endpoints (Restart), and the leader the running members agree on is found with Leader.
// Client gives a client every endpoint with the cluster config registry/doc.go recommends.
//
// It is tuned for speed (10 ms ticks, 50 ms election, no fsync, silent logger); a server
// starts in tens of milliseconds, a 3-member cluster in 0.1–0.3 s. A member's Stop takes 4–50
// ms, and the others agree on a new leader 40–130 ms after the leader's Stop (up to a few
// hundred ms with the race detector and 4 CPU burners on 2 cores). The 50 ms election holds
// under that load: an idle 3- or 5-member cluster kept its leader for 20 s with no election,
// also while the registry tests ran beside it (TestClusterQuietKeepsItsLeader, run with
// -etcdtest.quiet=20s). Nothing here is meant for production.
package etcdtest
