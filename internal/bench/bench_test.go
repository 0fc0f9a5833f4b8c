package bench

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var s []time.Duration
	for i := 10; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	sum := Summarize("x", s)
	if sum.N != 10 || sum.MedianMs != 5.5 || sum.P90Ms != 9 || sum.MinMs != 1 || sum.MaxMs != 10 {
		t.Fatalf("summary = %+v", sum)
	}
	if got := Summarize("odd", s[:3]); got.MedianMs != 9 {
		t.Fatalf("median of 10,9,8 = %v", got.MedianMs)
	}
	var buf bytes.Buffer
	if err := Print(&buf, true, sum); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "n", "median_ms", "p90_ms", "min_ms", "max_ms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %s: %s", k, buf.String())
		}
	}
}
