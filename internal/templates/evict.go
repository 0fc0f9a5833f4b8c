package templates

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"time"

	"github.com/cellhq/cell/internal/build"
	"github.com/cellhq/cell/internal/manager"
)

// Layer is one build layer on disk, for the cache's eviction.
type Layer struct {
	Name  string
	Bytes int64     // what removing it gives back
	Used  time.Time // last started from or found cached
}

// evict removes the least recently used layers until the cache fits CacheBytes (or nothing
// more can go): never one a tag points at (a template's current build), nor one a running or
// paused sandbox, a build's VM or another layer has its disk on (RemoveLayer refuses those:
// a child goes first, then its parent may follow).
func (s *Service) evict(ctx context.Context, budget int64) {
	if budget < 0 {
		return
	}
	layers := s.cfg.Snapshots.Layers()
	var total int64
	for _, l := range layers {
		total += l.Bytes
	}
	if total <= budget {
		return
	}
	keep, err := s.cfg.Store.TaggedSnapshots(ctx)
	if err != nil {
		s.cfg.Log.Warn("evicting build layers: reading the tags", "err", err)
		return
	}
	slices.SortFunc(layers, func(a, b Layer) int { return a.Used.Compare(b.Used) })
	// Each round removes the least recently used layer that can go, then starts over: a
	// parent refused while its child was there may go before newer layers once it is gone.
	for total > budget {
		removed := false
		for i, l := range layers {
			if l.Name == "" || keep[l.Name] {
				continue
			}
			if err := s.cfg.Snapshots.RemoveLayer(l.Name); err != nil {
				continue // in use
			}
			s.cfg.Log.Info("build layer evicted", "layer", l.Name, "bytes", l.Bytes)
			total -= l.Bytes
			layers[i].Name = ""
			removed = true
			break
		}
		if !removed {
			return
		}
	}
}

// cacheBudget is the layer cache's size limit (-1: none).
func (s *Service) cacheBudget() int64 {
	if s.cfg.CacheBytes <= 0 {
		return -1
	}
	return s.cfg.CacheBytes
}

// evictingMachines retries a layer's save once, after evicting down to half the budget, when
// the host's disk is full.
type evictingMachines struct {
	build.Machines
	s *Service
}

func (m evictingMachines) Save(ctx context.Context, vm build.VM, name, team string, meta []byte) (string, error) {
	saved, err := m.Machines.Save(ctx, vm, name, team, meta)
	if err != nil && (errors.Is(err, manager.ErrInsufficientStorage) || errors.Is(err, syscall.ENOSPC)) {
		budget := m.s.cacheBudget()
		if budget > 0 {
			budget /= 2
		} else {
			budget = 0
		}
		m.s.evict(ctx, budget)
		saved, err = m.Machines.Save(ctx, vm, name, team, meta)
	}
	return saved, err
}

// Lock is the wrapped Machines' cross-process layer lock, when it has one (without this, the
// wrapper would hide it from build.Run).
func (m evictingMachines) Lock(ctx context.Context, name string) (func(), error) {
	if l, ok := m.Machines.(build.Locker); ok {
		return l.Lock(ctx, name)
	}
	return func() {}, nil
}
