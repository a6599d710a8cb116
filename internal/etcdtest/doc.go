// Package etcdtest runs a real, embedded, single-node etcd for tests and examples.
//
// The server listens on unix sockets in a private temporary directory and clients reach it
// through a small TCP proxy on a loopback port. The proxy is what makes outages sharp: Stop
// first cuts every client connection (so the embedded server does not wait for open watch
// streams to finish) and then stops etcd; Start brings etcd back on the same sockets and data
// and reopens the proxy on the same port. Clients keep their endpoint across the outage.
//
// Cluster runs three or five members in one process, each with a client endpoint and a peer
// endpoint behind proxies of its own: members can be stopped as in a crash (Stop cuts their
// client and peer connections, then stops raft without handing leadership over), restarted on
// their data and endpoints (Restart), and the leader the running members agree on is found
// with Leader. Client gives a client every endpoint with the cluster config registry/doc.go
// recommends.
//
// It is tuned for speed (10 ms ticks, 50 ms election, no fsync, silent logger); a server
// starts in tens of milliseconds. Nothing here is meant for production.
package etcdtest
