// Package build owns template builds: what a build is (a base and a list of steps, E2B's
// shapes, or a Dockerfile translated into them), the key of each of its layers, and running it
// step by step in a sandbox whose state after each step is kept as a cached layer.
package build
