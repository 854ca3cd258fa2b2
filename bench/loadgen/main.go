// Load generator for `npm run bench` (bench/server.ts builds it with `go build` into a temp
// directory at bench time). Go standard library only. It makes every key and CSR before the
// clock starts, runs `-c` clients for `-seconds`, and prints one JSON object on stdout:
// operations, rate, latency percentiles, errors and the CPU time this process used.
//
// -rate paces the requests (open loop) instead of sending each as soon as the last answered.
//
// Modes (every TLS connection is new and never resumes a session, unless -keepalive):
//
//	healthz  GET /healthz
//	healthz-mtls  each client joins once (setup), then GET /healthz presenting its certificate:
//	         the cost of a mutual-TLS handshake, which every renewal pays
//	join     a real join as `cairn join` makes it: GET /v1/ca unverified, check the root's
//	         digest against the token, verify the server's certificate against that root,
//	         POST /v1/join; -conns 1 sends both on one connection, -conns 2 on two
//	renew    each client joins once (setup), then renews over mutual TLS with its newest
//	         certificate, a new connection per renewal; with -keepalive each client keeps
//	         one connection (made with the certificate it joined with) and renews on it,
//	         presenting that first certificate each time: every renewal then takes the
//	         grace path (the newest certificate counts as never received, and is revoked).
//	         Not what an agent does (it reconnects with its new certificate): a profile of
//	         a renewal's work without its handshake
//	cfssl    POST /api/v1/cfssl/sign over mutual TLS to `cfssl serve`
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type keyCsr struct {
	keyPEM []byte
	csrPEM string
}

var (
	mode      = flag.String("mode", "healthz", "healthz | healthz-mtls | join | renew | cfssl")
	url       = flag.String("url", "", "https://127.0.0.1:port")
	clients   = flag.Int("c", 50, "concurrent clients")
	seconds   = flag.Float64("seconds", 5, "measured time")
	warmup    = flag.Float64("warmup", 1, "warm-up time (not measured)")
	token     = flag.String("token", "", "join token (join, renew)")
	conns     = flag.Int("conns", 1, "join: TLS connections per join (1 or 2)")
	certFile  = flag.String("cert", "", "cfssl: client certificate")
	keyFile   = flag.String("key", "", "cfssl: client key")
	caFile    = flag.String("ca", "", "cfssl: server CA")
	keepalive = flag.Bool("keepalive", false, "reuse connections (cfssl, healthz, renew)")
	pool      = flag.Int("pool", 0, "distinct keys/CSRs made before timing (default 4 per client)")
	rate      = flag.Float64("rate", 0, "requests per second in all, evenly paced over the clients (0: each client sends its next request as soon as it has its answer); latency counts from the time a request was due, so a stall is not hidden by the requests it held back")
)

func die(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "loadgen: "+f+"\n", a...)
	os.Exit(1)
}

func makeKeys(n int) []keyCsr {
	out := make([]keyCsr, n)
	var wg sync.WaitGroup
	ch := make(chan int)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					die("%v", err)
				}
				der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: fmt.Sprintf("bench-%d", i)}}, k)
				if err != nil {
					die("%v", err)
				}
				kd, _ := x509.MarshalPKCS8PrivateKey(k)
				out[i] = keyCsr{pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}
			}
		}()
	}
	for i := 0; i < n; i++ {
		ch <- i
	}
	close(ch)
	wg.Wait()
	return out
}

func base36Digest(der []byte) string {
	h := sha256.Sum256(der)
	s := new(big.Int).SetBytes(h[:]).Text(36)
	return strings.Repeat("0", 50-len(s)) + s
}

// A client with its own transport: new connections only, no session cache (no resumption).
func newClient(cfg *tls.Config, keep bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		DisableKeepAlives:   !keep,
		MaxIdleConnsPerHost: 1,
		ForceAttemptHTTP2:   false,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func do(c *http.Client, method, path string, body interface{}, want int, out interface{}) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, *url+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("content-type", "application/json")
	}
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode != want {
		return fmt.Errorf("%s %s: %d %s", method, path, res.StatusCode, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Verify the server's chain (as presented on this connection) against one root, and that it
// is a CA replica's certificate (DNS:ca, OU=ca-replica).
func verifyAgainst(root *x509.Certificate) func(tls.ConnectionState) error {
	roots := x509.NewCertPool()
	roots.AddCert(root)
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no server certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "ca"}); err != nil {
			return err
		}
		if len(leaf.Subject.OrganizationalUnit) != 1 || leaf.Subject.OrganizationalUnit[0] != "ca-replica" {
			return errors.New("not a CA replica certificate")
		}
		return nil
	}
}

type caAnswer struct {
	Roots struct {
		Cluster string `json:"cluster"`
	} `json:"roots"`
}

type issued struct {
	Certificate string `json:"certificate"`
}

// One real join; returns the issued certificate PEM.
func joinOnce(k keyCsr, digest string) (string, error) {
	var root *x509.Certificate
	// the first request on this connection: nothing verified yet, the root is checked below
	var state tls.ConnectionState
	first := newClient(&tls.Config{InsecureSkipVerify: true, ServerName: "ca", VerifyConnection: func(cs tls.ConnectionState) error { state = cs; return nil }}, *conns == 1)
	defer first.CloseIdleConnections()
	var ca caAnswer
	if err := do(first, "GET", "/v1/ca", nil, 200, &ca); err != nil {
		return "", err
	}
	b, _ := pem.Decode([]byte(ca.Roots.Cluster))
	if b == nil {
		return "", errors.New("no cluster root")
	}
	if base36Digest(b.Bytes) != digest {
		return "", errors.New("root does not match the token's digest")
	}
	root, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return "", err
	}
	check := verifyAgainst(root)
	c := first
	if *conns == 1 {
		// the same connection: its certificate must chain to the root just checked
		if err := check(state); err != nil {
			return "", err
		}
	} else {
		c = newClient(&tls.Config{InsecureSkipVerify: true, ServerName: "ca", VerifyConnection: check}, false)
	}
	var out issued
	if err := do(c, "POST", "/v1/join", map[string]string{"token": *token, "csr": k.csrPEM}, 201, &out); err != nil {
		return "", err
	}
	return out.Certificate, nil
}

type result struct {
	Ops         int     `json:"ops"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"firstError,omitempty"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"rate"`
	P50         float64 `json:"p50"`
	P99         float64 `json:"p99"`
	ClientCpuMs float64 `json:"clientCpuMs"`
	Warmup      bool    `json:"-"`
}

func cpuMs() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
}

// Run op from every client for d; op(w, i) with w the client and i a counter.
func run(d time.Duration, op func(w int, i int64) error) result {
	var next int64
	var errs int64
	var firstErr atomic.Value
	lat := make([][]float64, *clients)
	cpu0 := cpuMs()
	t0 := time.Now()
	end := t0.Add(d)
	var wg sync.WaitGroup
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for k := 0; time.Now().Before(end); k++ {
				s := time.Now()
				if *rate > 0 {
					due := t0.Add(time.Duration(float64(k**clients+w) / *rate * float64(time.Second)))
					if due.After(end) {
						break
					}
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
					s = due
				}
				if err := op(w, atomic.AddInt64(&next, 1)); err != nil {
					atomic.AddInt64(&errs, 1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(10 * time.Millisecond)
					continue
				}
				lat[w] = append(lat[w], float64(time.Since(s).Microseconds())/1000)
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(t0).Seconds()
	var all []float64
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Float64s(all)
	r := result{Ops: len(all), Errors: int(errs), Seconds: el, Rate: float64(len(all)) / el, ClientCpuMs: cpuMs() - cpu0}
	if len(all) > 0 {
		r.P50 = all[len(all)/2]
		r.P99 = all[len(all)*99/100]
	}
	if v := firstErr.Load(); v != nil {
		r.FirstError = v.(string)
	}
	return r
}

func main() {
	flag.Parse()
	if *url == "" {
		die("-url is required")
	}
	n := *pool
	if n == 0 {
		n = *clients * 4
	}
	var op func(w int, i int64) error
	switch *mode {
	case "healthz":
		shared := newClient(&tls.Config{InsecureSkipVerify: true}, *keepalive)
		op = func(w int, i int64) error {
			c := shared
			if !*keepalive {
				c = newClient(&tls.Config{InsecureSkipVerify: true}, false)
			}
			return do(c, "GET", "/healthz", nil, 200, nil)
		}
	case "healthz-mtls":
		keys := makeKeys(*clients)
		digest := strings.Split(*token, "-")[2]
		certs := make([]tls.Certificate, *clients)
		for w := range certs {
			certPEM, err := joinOnce(keys[w], digest)
			if err != nil {
				die("join: %v", err)
			}
			if certs[w], err = tls.X509KeyPair([]byte(certPEM), keys[w].keyPEM); err != nil {
				die("%v", err)
			}
		}
		op = func(w int, i int64) error {
			c := newClient(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{certs[w]}}, false)
			return do(c, "GET", "/healthz", nil, 200, nil)
		}
	case "join":
		keys := makeKeys(n)
		digest := strings.Split(*token, "-")[2]
		op = func(w int, i int64) error {
			_, err := joinOnce(keys[int(i)%len(keys)], digest)
			return err
		}
	case "renew":
		keys := makeKeys(n + *clients)
		digest := strings.Split(*token, "-")[2]
		type node struct {
			cert tls.Certificate
			n    int
		}
		nodes := make([]node, *clients)
		for w := range nodes {
			certPEM, err := joinOnce(keys[n+w], digest)
			if err != nil {
				die("join: %v", err)
			}
			tc, err := tls.X509KeyPair([]byte(certPEM), keys[n+w].keyPEM)
			if err != nil {
				die("%v", err)
			}
			nodes[w] = node{cert: tc}
		}
		kept := make([]*http.Client, *clients)
		for w := range kept {
			kept[w] = newClient(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{nodes[w].cert}}, true)
		}
		op = func(w int, i int64) error {
			nd := &nodes[w]
			nd.n++
			k := keys[(w+*clients*nd.n)%n]
			c := kept[w]
			if !*keepalive {
				c = newClient(&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{nd.cert}}, false)
			}
			var out issued
			if err := do(c, "POST", "/v1/renew", map[string]string{"csr": k.csrPEM}, 200, &out); err != nil {
				return err
			}
			tc, err := tls.X509KeyPair([]byte(out.Certificate), k.keyPEM)
			if err != nil {
				return err
			}
			nd.cert = tc
			return nil
		}
	case "cfssl":
		keys := makeKeys(n)
		tc, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			die("%v", err)
		}
		caPEM, err := os.ReadFile(*caFile)
		if err != nil {
			die("%v", err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(caPEM)
		cfg := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{tc}, ServerName: "localhost"}
		shared := make([]*http.Client, *clients)
		for w := range shared {
			shared[w] = newClient(cfg, true)
		}
		op = func(w int, i int64) error {
			c := shared[w]
			if !*keepalive {
				c = newClient(cfg, false)
			}
			var out struct {
				Success bool `json:"success"`
				Result  struct {
					Certificate string `json:"certificate"`
				} `json:"result"`
			}
			if err := do(c, "POST", "/api/v1/cfssl/sign", map[string]string{"certificate_request": keys[int(i)%len(keys)].csrPEM}, 200, &out); err != nil {
				return err
			}
			if !out.Success || !strings.Contains(out.Result.Certificate, "BEGIN CERTIFICATE") {
				return errors.New("cfssl: no certificate in the answer")
			}
			return nil
		}
	default:
		die("unknown -mode %s", *mode)
	}
	if *warmup > 0 {
		run(time.Duration(*warmup*float64(time.Second)), op)
	}
	fmt.Fprintln(os.Stderr, "loadgen: measuring")
	r := run(time.Duration(*seconds*float64(time.Second)), op)
	json.NewEncoder(os.Stdout).Encode(r)
}
