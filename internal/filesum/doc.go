// Package filesum computes the digests that name and verify the files of saved VMs (memory,
// device state, disk layers): the layer cache records them when it publishes a layer and checks
// them when it adopts one it did not write.
//
// A digest is canonical for a file's content whatever its holes: the file is cut into 1 MiB
// chunks, each chunk's sha256 is taken (a chunk the file system reports as a hole is known to
// be zeros and is not read), and the digest is the sha256 of the size and the chunks' digests.
// A sparse 512 MiB memory file with 130 MiB of data is read for its data only.
package filesum
