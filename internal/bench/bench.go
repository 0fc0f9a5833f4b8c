package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"
)

// Summary is the distribution of one measured quantity.
type Summary struct {
	Name     string             `json:"name"`
	N        int                `json:"n"`
	MedianMs float64            `json:"median_ms"`
	P90Ms    float64            `json:"p90_ms"`
	MinMs    float64            `json:"min_ms"`
	MaxMs    float64            `json:"max_ms"`
	Extra    map[string]float64 `json:"extra,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Percentile returns the p-th percentile (0..100) of sorted samples by nearest rank.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

// Median returns the median of samples (the mean of the middle two for an even count).
func Median(samples []time.Duration) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Summarize describes samples.
func Summarize(name string, samples []time.Duration) Summary {
	s := slices.Clone(samples)
	slices.Sort(s)
	sum := Summary{Name: name, N: len(s)}
	if len(s) == 0 {
		return sum
	}
	sum.MedianMs = ms(Median(s))
	sum.P90Ms = ms(Percentile(s, 90))
	sum.MinMs = ms(s[0])
	sum.MaxMs = ms(s[len(s)-1])
	return sum
}

// MedianFloat returns the median of values.
func MedianFloat(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Print writes summaries as JSON lines or as a table.
func Print(w io.Writer, asJSON bool, sums ...Summary) error {
	for _, s := range sums {
		if asJSON {
			b, err := json.Marshal(s)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(w, "%s\n", b); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(w, "%-14s n=%-3d median %8.1f ms   p90 %8.1f ms   min %8.1f ms   max %8.1f ms\n",
			s.Name, s.N, s.MedianMs, s.P90Ms, s.MinMs, s.MaxMs)
		for k, v := range s.Extra {
			fmt.Fprintf(w, "%-14s   %s = %.1f\n", "", k, v)
		}
	}
	return nil
}
