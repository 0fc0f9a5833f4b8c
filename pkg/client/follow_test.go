package client

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cellhq/cell/pkg/e2bapi"
)

// TestFollowBuild: every log line is handed on once, in order, including those that come with
// the final status; a failed build is a *BuildError naming its step.
func TestFollowBuild(t *testing.T) {
	lines := func(from, n int) []e2bapi.BuildLogEntry {
		var out []e2bapi.BuildLogEntry
		for i := range n {
			out = append(out, e2bapi.BuildLogEntry{Message: fmt.Sprint(from + i)})
		}
		return out
	}
	for _, end := range []string{"ready", "error"} {
		pages := []e2bapi.BuildStatus{
			{Status: "building", LogEntries: lines(0, 100)},
			{Status: "building", LogEntries: lines(100, 3)},
			{Status: "building", LogEntries: nil},
			{Status: end, LogEntries: lines(103, 2), Reason: &e2bapi.BuildReason{Step: "2", Message: "boom"}},
			{Status: end, Reason: &e2bapi.BuildReason{Step: "2", Message: "boom"}},
		}
		var offsets []int
		var got []string
		err := FollowBuild(context.Background(), func(_ context.Context, offset int) (e2bapi.BuildStatus, error) {
			offsets = append(offsets, offset)
			p := pages[0]
			pages = pages[1:]
			return p, nil
		}, func(e BuildLog) { got = append(got, e.Message) })
		if len(got) != 105 || got[0] != "0" || got[104] != "104" {
			t.Fatalf("%s: %d lines handed on", end, len(got))
		}
		if fmt.Sprint(offsets) != "[0 100 103 103 105]" {
			t.Errorf("%s: offsets asked %v", end, offsets)
		}
		var be *BuildError
		switch {
		case end == "ready" && err != nil:
			t.Errorf("ready: %v", err)
		case end == "error" && (!errors.As(err, &be) || be.Step != "2" || be.Message != "boom"):
			t.Errorf("error: %v", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := FollowBuild(ctx, func(context.Context, int) (e2bapi.BuildStatus, error) {
		return e2bapi.BuildStatus{Status: "building"}, nil
	}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
