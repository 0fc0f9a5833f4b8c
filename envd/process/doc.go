// Package process implements E2B's process.Process Connect service inside the guest: it starts
// commands as a given user with their env and working directory, streams stdout and stderr as
// events (each stream in order, complete), takes stdin, delivers signals, lets clients re-attach to
// running processes by pid or tag, and reports how each ended (128+N for a signal N). Processes
// outlive the request that started them; each is owned by the Service until it ends.
package process
