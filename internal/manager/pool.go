package manager

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cellhq/cell/internal/ids"
	"github.com/cellhq/cell/internal/sandbox"
	"github.com/cellhq/cell/pkg/envd"
)

// poolWarmUp runs once in every pool sandbox so that the code of a login shell (E2B's SDKs run
// every command through one) and of Python's start is translated (TCG) and cached before a
// user's first command: a first `python3 -c pass` then takes ~0.36 s instead of ~0.58 s
// (BenchmarkServePool, n=8); a refill costs ~0.4 s more guest CPU.
var poolWarmUp = sandbox.RunSpec{Cmd: "/bin/bash", Args: []string{"-l", "-c", "python3 -c pass"}}

// pool keeps restored, warmed sandboxes of one template ready to hand out. A sandbox leaves the
// pool through exactly one receive on ready, so none is handed out twice.
// pooled is a ready sandbox and the access token envd already enforces: a create that needs no
// other settings hands both out without a trip into the guest.
type pooled struct {
	id    string
	sb    Instance
	token string
}

type pool struct {
	template string
	size     int
	ready    chan pooled
	wake     chan struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// PoolStats says how full a template's pool is.
type PoolStats struct {
	Ready int `json:"ready"`
	Size  int `json:"size"`
}

// StartPool keeps size sandboxes of template ready, refilled in the background, until Shutdown.
func (m *Manager) StartPool(template string, size int) {
	if size <= 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &pool{template: template, size: size, ready: make(chan pooled, size), wake: make(chan struct{}, 1), cancel: cancel}
	m.mu.Lock()
	if m.pools == nil {
		m.pools = map[string]*pool{}
	}
	m.pools[template] = p
	m.mu.Unlock()
	p.wg.Add(1)
	go m.fill(ctx, p)
}

func (m *Manager) fill(ctx context.Context, p *pool) {
	defer p.wg.Done()
	backoff := time.Second
	for ctx.Err() == nil {
		if len(p.ready) >= p.size {
			select {
			case <-p.wake:
			case <-ctx.Done():
				return
			}
			continue
		}
		id, token := ids.NewSandboxID(), newToken()
		sb, err := m.cfg.Runtime.Boot(ctx, sandbox.Options{ID: id, Template: p.template, DiskMiB: m.diskMiB(p.template), Init: &envd.InitRequest{AccessToken: &token}})
		if err == nil {
			var res sandbox.Result
			res, err = sb.Run(ctx, poolWarmUp, nil, io.Discard, io.Discard, nil)
			if err == nil && res.ExitCode != 0 {
				err = fmt.Errorf("warm-up exited %d", res.ExitCode)
			}
			if err != nil {
				_ = sb.Close()
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("refilling the pool", "template", p.template, "err", err)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		p.ready <- pooled{id: id, sb: sb, token: token} // never blocks: only this goroutine adds, and it checked the length
	}
}

// takePooled hands out a ready sandbox of template, if there is one.
func (m *Manager) takePooled(template string) *pooled {
	m.mu.Lock()
	p := m.pools[template]
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	for {
		select {
		case it := <-p.ready:
			sb := it.sb
			select {
			case p.wake <- struct{}{}:
			default:
			}
			select {
			case <-sb.Exited():
				_ = sb.Close() // died while waiting: try the next one
				continue
			default:
			}
			return &it
		default:
			return nil
		}
	}
}

// Pools reports each pool's fill.
func (m *Manager) Pools() map[string]PoolStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]PoolStats{}
	for name, p := range m.pools {
		out[name] = PoolStats{Ready: len(p.ready), Size: p.size}
	}
	return out
}

// drainPools stops refilling and releases every pooled sandbox.
func (m *Manager) drainPools() {
	m.mu.Lock()
	pools := m.pools
	m.pools = nil
	m.mu.Unlock()
	for _, p := range pools {
		p.cancel()
		p.wg.Wait()
		close(p.ready)
		for it := range p.ready {
			_ = it.sb.Close()
		}
	}
}
