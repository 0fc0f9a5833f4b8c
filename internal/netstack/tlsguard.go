package netstack

import (
	"bufio"
	"encoding/binary"
	"io"
	"sync/atomic"
)

// maxTLSRecord bounds one TLS record: 2^14 bytes of plaintext plus the most TLS 1.2 adds.
const maxTLSRecord = 1<<14 + 2048

// TLS handshake states, as the server side of a name-admitted TLS connection sees them.
const (
	tlsHello = iota // before the server's first ServerHello
	tlsRetry        // the server asked for a second ClientHello (TLS 1.3 HelloRetryRequest)
	tlsDone         // past the ServerHello: nothing the client sends is in clear any more
)

// helloRetryRandom marks a ServerHello that is a HelloRetryRequest (RFC 8446 4.1.3).
var helloRetryRandom = [32]byte{
	0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
	0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
}

// relayTLSClient copies the guest's TLS records after its first ClientHello to dst. Until the
// server's side (relayTLSServer) has seen a ServerHello, every ClientHello in clear must name a
// host admit allows: the second one a HelloRetryRequest asks for is sent in clear too, and
// could name another host than the first. Until then only what a TLS client sends before the
// server's hello passes: handshake records holding ClientHellos, a change_cipher_spec (TLS
// 1.3's compatibility one), alerts, and application data only if the first ClientHello offered
// early data (earlyData); anything else, which the guard cannot read, ends the connection.
func relayTLSClient(dst io.Writer, src *bufio.Reader, state *atomic.Int32, admit func(hosts []string) error, earlyData bool) error {
	var hs []byte
	var rec [5 + maxTLSRecord]byte
	for state.Load() != tlsDone {
		if _, err := io.ReadFull(src, rec[:5]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		size := int(binary.BigEndian.Uint16(rec[3:5]))
		if rec[1] != 3 || size > maxTLSRecord {
			return refuse("not a TLS record (%x)", rec[:5])
		}
		if _, err := io.ReadFull(src, rec[5:5+size]); err != nil {
			return err
		}
		// The server set tlsDone before the guest could see its ServerHello, so a record
		// read after that may be encrypted: it is not parsed.
		if state.Load() != tlsDone {
			switch rec[0] {
			case 0x14: // change_cipher_spec
			case 0x15: // alert
			case 0x17: // application data: early data, encrypted for the server the hello named
				if !earlyData {
					return refuse("TLS application data before the server's hello, without early data offered")
				}
			case 0x16:
				hs = append(hs, rec[5:5+size]...)
				for len(hs) >= 4 {
					total := 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
					if hs[0] != 1 {
						return refuse("a TLS handshake message of type %d before the server's hello", hs[0])
					}
					if total > maxSniff {
						return refuse("a TLS handshake message of %d bytes", total)
					}
					if len(hs) < total {
						break
					}
					h, err := parseClientHello(hs[:total])
					if err != nil {
						return err
					}
					if err := admit([]string{h.name}); err != nil {
						return err
					}
					hs = hs[total:]
				}
			default:
				return refuse("a TLS record of type %d before the server's hello", rec[0])
			}
		}
		if _, err := dst.Write(rec[:5+size]); err != nil {
			return err
		}
	}
	_, err := io.Copy(dst, src)
	return err
}

// relayTLSServer copies the server's side to dst, reading its records until the ServerHello
// that ends the clear part of the client's handshake, and sets state before the guest sees it.
// Until then only a ServerHello (or a HelloRetryRequest), a change_cipher_spec and alerts pass:
// a server that answers otherwise (not in TLS: a plain HTTP server, say) ends the connection,
// rather than leave the guard a raw pipe it does not read.
func relayTLSServer(dst io.Writer, src io.Reader, state *atomic.Int32) error {
	br := bufio.NewReaderSize(src, 32<<10)
	var hs []byte
	var rec [5 + maxTLSRecord]byte
	for state.Load() != tlsDone {
		if _, err := io.ReadFull(br, rec[:5]); err != nil {
			return err
		}
		size := int(binary.BigEndian.Uint16(rec[3:5]))
		if rec[1] != 3 || size > maxTLSRecord {
			return refuse("the server's answer is not TLS (%x)", rec[:5])
		}
		if _, err := io.ReadFull(br, rec[5:5+size]); err != nil {
			return err
		}
		switch rec[0] {
		case 0x14: // change_cipher_spec (TLS 1.3's compatibility one comes before its retry request's answer)
		case 0x15: // alert
		case 0x16:
			hs = append(hs, rec[5:5+size]...)
			for len(hs) >= 4 && state.Load() != tlsDone {
				total := 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
				if hs[0] != 2 || total > maxSniff {
					return refuse("the server's first TLS handshake message is not a ServerHello (type %d, %d bytes)", hs[0], total)
				}
				if len(hs) < total {
					break
				}
				if total >= 4+2+32 && [32]byte(hs[6:38]) == helloRetryRandom && state.Load() == tlsHello {
					state.Store(tlsRetry)
				} else {
					state.Store(tlsDone)
				}
				hs = hs[total:]
			}
		default:
			return refuse("a TLS record of type %d from the server before its hello", rec[0])
		}
		if _, err := dst.Write(rec[:5+size]); err != nil {
			return err
		}
	}
	_, err := io.Copy(dst, br)
	return err
}
