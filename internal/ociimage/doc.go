// Package ociimage pulls OCI and Docker images from registries and unpacks them into a
// directory tree: the first layer of a template built `fromImage`.
//
// It owns the registry side of a build: references and the operator's mirrors
// (`--registry-mirror docker.io=URL`), the credentials E2B's SDK sends (`fromImageRegistry`), a
// transport that never reaches the host's private networks for a user's reference, and the
// limits a hostile image meets (its size, its entries, paths and links that try to leave the
// tree). What a guest needs on top of the tree (envd, the user `user`) is internal/image's.
package ociimage
