// Package datadir owns the rules of a data directory ($CELL_HOME) as a whole: the paths in it
// (Layout, whose comment draws the tree), and that one daemon at a time owns it. `cell serve`
// takes the directory's lock before it touches anything (the image cache, the store, the VMs it
// re-adopts) and holds it for its life; a second daemon on the same directory stops with a
// message naming the first instead of "recovering" (and so killing) the first one's sandboxes.
// Commands that remove shared state on their own (pruning the image cache) take the lock for
// that moment, and skip the removal when a daemon holds it.
package datadir
