// Package bench owns the statistics `cell bench` reports: it summarises repeated measurements as
// median, p90, min and max, and prints them as a table or as one JSON object per line.
package bench
