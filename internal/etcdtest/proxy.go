package etcdtest

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// proxy forwards loopback TCP connections to etcd (a unix socket for clients, a TCP port for
// a cluster member's peers). While it is down it closes every connection it accepts, so
// clients fail fast instead of hanging.
//
// mu guards network, target, up, conns and closed.
type proxy struct {
	ln net.Listener
	wg sync.WaitGroup

	mu      sync.Mutex
	network string
	target  string
	up      bool
	closed  bool
	conns   map[net.Conn]struct{}
}

func newProxy(network, target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("etcdtest: proxy listen: %w", err)
	}
	p := &proxy{ln: ln, network: network, target: target, up: true, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		if !p.track(c) {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		network, target := p.network, p.target
		p.mu.Unlock()
		up, err := net.Dial(network, target)
		if err != nil {
			p.untrack(c)
			_ = c.Close()
			continue
		}
		if !p.track(up) {
			p.untrack(c)
			_ = c.Close()
			_ = up.Close()
			continue
		}
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// track records c if the proxy is up and reports whether it did.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.up || p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.untrack(dst)
	p.untrack(src)
}

// setTarget makes new connections go to target (a member restarted on another peer port).
func (p *proxy) setTarget(network, target string) {
	p.mu.Lock()
	p.network, p.target = network, target
	p.mu.Unlock()
}

// setUp opens or cuts the proxy; cutting closes every open connection.
func (p *proxy) setUp(up bool) {
	p.mu.Lock()
	p.up = up
	var cut []net.Conn
	if !up {
		for c := range p.conns {
			cut = append(cut, c)
		}
		clear(p.conns)
	}
	p.mu.Unlock()
	for _, c := range cut {
		_ = c.Close()
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.setUp(false)
	_ = p.ln.Close()
	p.wg.Wait()
}
