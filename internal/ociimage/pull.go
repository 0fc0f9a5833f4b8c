package ociimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ErrInvalid is wrapped by every error a user's reference or credentials cause (a 400).
var ErrInvalid = errors.New("invalid image")

// AddrGuard says whether the host may connect to an address for a user (netstack.Guard).
type AddrGuard interface {
	Reserved(a netip.Addr) (why string, blocked bool)
}

// Puller resolves and pulls images. Its zero value is not usable: use NewPuller.
type Puller struct {
	mirrors map[string]*url.URL // registry host (as go-containerregistry names it) -> mirror
	guarded http.RoundTripper   // for registries a user names
	trusted http.RoundTripper   // for the operator's mirrors
}

// NewPuller returns a Puller with the operator's mirrors ("docker.io=http://127.0.0.1:5000";
// a mirror's scheme says whether it speaks TLS) whose connections to registries a user names
// are refused when guard says the address is reserved.
func NewPuller(mirrors []string, guard AddrGuard) (*Puller, error) {
	p := &Puller{mirrors: map[string]*url.URL{}}
	mirrorAddrs := map[string]bool{}
	for _, m := range mirrors {
		reg, raw, ok := strings.Cut(m, "=")
		u, err := url.Parse(raw)
		switch {
		case !ok || reg == "" || raw == "":
			return nil, fmt.Errorf("registry mirror %q: want REGISTRY=URL (docker.io=http://127.0.0.1:5000)", m)
		case err != nil:
			return nil, fmt.Errorf("registry mirror %q: %w", m, err)
		case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
			return nil, fmt.Errorf("registry mirror %q: the URL needs http:// or https:// and a host", m)
		case u.Path != "" && u.Path != "/", u.RawQuery != "", u.User != nil:
			return nil, fmt.Errorf("registry mirror %q: give the mirror's scheme and host only (a registry serves /v2/ at its root)", m)
		}
		r, err := name.NewRegistry(reg)
		if err != nil {
			return nil, fmt.Errorf("registry mirror %q: %w", m, err)
		}
		p.mirrors[r.RegistryStr()] = u
		port := u.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
		}
		mirrorAddrs[net.JoinHostPort(u.Hostname(), port)] = true
	}
	// No HTTP proxy from the environment: a proxy would make the connections the guard
	// cannot see.
	base := http.DefaultTransport.(*http.Transport)
	guarded := base.Clone()
	guarded.Proxy = nil
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("registry address %q: %w", address, err)
			}
			if why, blocked := guard.Reserved(ap.Addr()); blocked {
				return fmt.Errorf("%w: the registry's address %s is not reachable for builds (%s); an operator may name it with `cell serve --registry-mirror`",
					ErrInvalid, ap.Addr(), why)
			}
			return nil
		}}
	guarded.DialContext = d.DialContext
	p.guarded = guarded
	// A mirror is the operator's: its own address is reached whatever it is. Anything else a
	// pull through it is sent to (a layer's foreign URLs, a redirect) is guarded like a user's.
	direct := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	trusted := base.Clone()
	trusted.Proxy = nil
	trusted.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if mirrorAddrs[addr] {
			return direct.DialContext(ctx, network, addr)
		}
		return d.DialContext(ctx, network, addr)
	}
	p.trusted = trusted
	return p, nil
}

// Close lets go of idle connections.
func (p *Puller) Close() {
	for _, t := range []http.RoundTripper{p.guarded, p.trusted} {
		if tr, ok := t.(*http.Transport); ok {
			tr.CloseIdleConnections()
		}
	}
}

// Credentials are E2B's `fromImageRegistry`: how to log in to the image's registry.
type Credentials struct {
	Type               string `json:"type"`
	Username           string `json:"username,omitempty"`
	Password           string `json:"password,omitempty"`
	ServiceAccountJSON string `json:"serviceAccountJson,omitempty"`
	AWSAccessKeyID     string `json:"awsAccessKeyId,omitempty"`
}

// ParseCredentials reads E2B's `fromImageRegistry` (nil when absent). "registry" logs in with a
// user name and password, "gcp" with a service account key (as `_json_key`); "aws" (ECR's
// token exchange) is refused with a way around it.
func ParseCredentials(raw json.RawMessage) (*Credentials, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var c Credentials
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%w: fromImageRegistry: %w", ErrInvalid, err)
	}
	switch c.Type {
	case "registry":
		if c.Username == "" || c.Password == "" {
			return nil, fmt.Errorf("%w: fromImageRegistry: type registry needs username and password", ErrInvalid)
		}
	case "gcp":
		if !json.Valid([]byte(c.ServiceAccountJSON)) {
			return nil, fmt.Errorf("%w: fromImageRegistry: type gcp needs serviceAccountJson, a service account key in JSON", ErrInvalid)
		}
	case "aws":
		return nil, fmt.Errorf("%w: fromImageRegistry: type aws is not supported by Cell; log in with type registry, username AWS and the password `aws ecr get-login-password` prints", ErrInvalid)
	default:
		return nil, fmt.Errorf("%w: fromImageRegistry: type %q: want registry or gcp", ErrInvalid, c.Type)
	}
	return &c, nil
}

func (c *Credentials) authenticator() authn.Authenticator {
	switch {
	case c == nil:
		return authn.Anonymous
	case c.Type == "gcp":
		return authn.FromConfig(authn.AuthConfig{Username: "_json_key", Password: c.ServiceAccountJSON})
	default:
		return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password})
	}
}

// maxConfig bounds an image's config (a few KiB in practice), which is read into memory.
const maxConfig = 4 << 20

// Platform is the only one Cell's guests run.
var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// Image is a resolved image: its digest names its content.
type Image struct {
	// Ref is the reference as given, Source where it is pulled from (a mirror's, if any).
	Ref, Source string
	Digest      string // sha256:… of the manifest
	Config      v1.Config
	// Bytes is the sum of its layers' compressed sizes, as the manifest says.
	Bytes int64
	img   v1.Image
}

// ParseReference checks a user's image reference ("python:3.12", "ghcr.io/o/r@sha256:…").
func ParseReference(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%w: fromImage %q: %w", ErrInvalid, ref, err)
	}
	return r, nil
}

// Resolve finds ref's manifest for linux/amd64 (through a mirror when the operator named one
// for its registry) with creds, and reads its config. Nothing is downloaded beyond that.
func (p *Puller) Resolve(ctx context.Context, ref string, creds *Credentials) (*Image, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	src, transport, err := p.source(r)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(src, remote.WithContext(ctx), remote.WithAuth(creds.authenticator()),
		remote.WithTransport(transport), remote.WithPlatform(platform), remote.WithUserAgent("cell"))
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", src, err)
	}
	dg, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", src, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("image %s: its manifest: %w", src, err)
	}
	// The config is read whole: its size is the manifest's word, checked first.
	if m.Config.Size < 0 || m.Config.Size > maxConfig {
		return nil, fmt.Errorf("%w: image %s: a config of %d bytes (at most %d)", ErrInvalid, src, m.Config.Size, maxConfig)
	}
	out := &Image{Ref: ref, Source: src.String(), Digest: dg.String(), img: img}
	for _, l := range m.Layers {
		if l.Size < 0 {
			return nil, fmt.Errorf("%w: image %s: a layer of %d bytes", ErrInvalid, src, l.Size)
		}
		out.Bytes += l.Size
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: its config: %w", src, err)
	}
	if cf.OS != "" && cf.OS != platform.OS || cf.Architecture != "" && cf.Architecture != platform.Architecture {
		return nil, fmt.Errorf("%w: image %s is for %s/%s; Cell's guests run linux/amd64", ErrInvalid, src, cf.OS, cf.Architecture)
	}
	out.Config = cf.Config
	return out, nil
}

// source is where r is pulled from: the mirror of its registry, if there is one, with the
// transport for it.
func (p *Puller) source(r name.Reference) (name.Reference, http.RoundTripper, error) {
	m, ok := p.mirrors[r.Context().RegistryStr()]
	if !ok {
		return r, p.guarded, nil
	}
	var opts []name.Option
	if m.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	repo := m.Host + "/" + r.Context().RepositoryStr()
	var (
		src name.Reference
		err error
	)
	switch r := r.(type) {
	case name.Digest:
		src, err = name.NewDigest(repo+"@"+r.DigestStr(), opts...)
	default:
		src, err = name.NewTag(repo+":"+r.Identifier(), opts...)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s through the mirror %s: %w", ErrInvalid, r, m, err)
	}
	return src, p.trusted, nil
}
