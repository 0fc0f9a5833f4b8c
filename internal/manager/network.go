package manager

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/cellhq/cell/internal/netstack"
	"github.com/cellhq/cell/internal/store"
)

// compileNet turns a sandbox's stored network settings into the rules its network enforces.
func compileNet(internet bool, nw store.Network) (*netstack.Rules, error) {
	if len(nw.AllowOut) > maxNetEntries || len(nw.DenyOut) > maxNetEntries {
		return nil, fmt.Errorf("%w: network: at most %d allowOut and %d denyOut entries", ErrInvalid, maxNetEntries, maxNetEntries)
	}
	r, err := netstack.Compile(netstack.Policy{Internet: internet, AllowOut: nw.AllowOut, DenyOut: nw.DenyOut})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return r, nil
}

func denyAll() *netstack.Rules {
	r, _ := netstack.Compile(netstack.Policy{})
	return r
}

// Limits on a network policy.
const maxNetEntries = 512

// NetworkUpdate changes a sandbox's egress policy; nil fields are left as they are.
type NetworkUpdate struct {
	AllowInternet *bool
	AllowOut      *[]string
	DenyOut       *[]string
}

// UpdateNetwork changes team's sandbox's egress policy. A running sandbox applies it at once
// (new connections follow it; open ones it refuses are ended); a paused one when it resumes.
func (m *Manager) UpdateNetwork(ctx context.Context, team, id string, u NetworkUpdate) (Info, error) {
	b, err := m.lookup(team, id)
	if err != nil {
		return Info{}, err
	}
	b.op.Lock()
	defer b.op.Unlock()
	b.mu.Lock()
	rec := b.rec
	sb := b.sb
	b.mu.Unlock()
	if u.AllowInternet != nil {
		rec.AllowInternet = *u.AllowInternet
	}
	if u.AllowOut != nil {
		rec.Network.AllowOut = *u.AllowOut
	}
	if u.DenyOut != nil {
		rec.Network.DenyOut = *u.DenyOut
	}
	rules, err := compileNet(rec.AllowInternet, rec.Network)
	if err != nil {
		return Info{}, err
	}
	b.mu.Lock()
	if b.state.gone() {
		b.mu.Unlock()
		return Info{}, fmt.Errorf("%w: sandbox %q", ErrNotFound, id)
	}
	b.rec.AllowInternet, b.rec.Network = rec.AllowInternet, rec.Network
	rec = b.rec
	if sb != nil && sb == b.sb {
		if n := sb.Network(); n != nil {
			n.SetRules(rules)
		}
	}
	b.mu.Unlock()
	if err := m.cfg.Store.PutSandbox(context.WithoutCancel(ctx), rec); err != nil {
		return Info{}, err
	}
	return Info{rec}, nil
}

// PortTarget is how the proxy reaches a port of a sandbox.
type PortTarget struct {
	// Dial opens a connection to the port inside the guest.
	Dial func(ctx context.Context) (net.Conn, error)
	// TrafficToken, when set, must come with every request (allowPublicTraffic: false).
	TrafficToken string
}

// Port returns how to reach port of a running sandbox (any team: the URL is the capability,
// guarded by the traffic token when the sandbox asked for one).
func (m *Manager) Port(id string, port uint16) (PortTarget, error) {
	b, err := m.lookup("", id)
	if err != nil {
		return PortTarget{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sb == nil || b.rec.State != store.StateRunning {
		return PortTarget{}, fmt.Errorf("%w: sandbox %q is %s", ErrNotFound, id, b.rec.State)
	}
	sb := b.sb
	return PortTarget{
		Dial: func(ctx context.Context) (net.Conn, error) {
			// Through the sandbox's network first (a server on 0.0.0.0, as on E2B); a refusal
			// there may be a server on 127.0.0.1 only, reached through envd instead.
			if n := sb.Network(); n != nil {
				c, err := n.DialGuest(ctx, port)
				if err == nil || !strings.Contains(err.Error(), "refused") {
					return c, err
				}
			}
			c, err := sb.DialLocal(ctx, port)
			if err != nil && strings.Contains(err.Error(), "not open") {
				return nil, fmt.Errorf("port %d: connection refused: %w", port, err)
			}
			return c, err
		},
		TrafficToken: b.rec.TrafficToken,
	}, nil
}

// NetStats returns a running sandbox's network counters.
func (m *Manager) NetStats(team, id string) (netstack.Stats, bool, error) {
	b, err := m.lookup(team, id)
	if err != nil {
		return netstack.Stats{}, false, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sb == nil || b.sb.Network() == nil {
		return netstack.Stats{}, false, nil
	}
	return b.sb.Network().Stats(), true, nil
}

// SandboxNet is one running sandbox's network counters.
type SandboxNet struct {
	ID, Team string
	Stats    netstack.Stats
}

// NetStatsAll returns the network counters of every running sandbox (for the daemon's metrics).
func (m *Manager) NetStatsAll() []SandboxNet {
	var out []SandboxNet
	for _, b := range m.allBoxes() {
		b.mu.Lock()
		if b.sb != nil && b.sb.Network() != nil && !b.state.gone() {
			out = append(out, SandboxNet{ID: b.rec.ID, Team: b.rec.TeamID, Stats: b.sb.Network().Stats()})
		}
		b.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
