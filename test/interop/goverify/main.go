// goverify: verify a certificate against a CA with Go's crypto/x509 (standard library only).
//
//	goverify <ca.pem> <cert.pem> <serverAuth|clientAuth|any> [dns-name-or-ip]
//
// Exit 0 and "OK ..." on success; exit 1 and "FAIL: <reason>" when verification fails;
// exit 2 on bad usage or unreadable input.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

func readCert(path string) *x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(2)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		fmt.Fprintln(os.Stderr, "ERROR: no PEM CERTIFICATE block in", path)
		os.Exit(2)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		// Go's parser is strict: a parse failure is a verification failure.
		fmt.Println("FAIL: parse:", err)
		os.Exit(1)
	}
	return cert
}

func main() {
	if len(os.Args) < 4 || len(os.Args) > 5 {
		fmt.Fprintln(os.Stderr, "usage: goverify <ca.pem> <cert.pem> <serverAuth|clientAuth|any> [name]")
		os.Exit(2)
	}
	ca := readCert(os.Args[1])
	cert := readCert(os.Args[2])
	var usage x509.ExtKeyUsage
	switch os.Args[3] {
	case "serverAuth":
		usage = x509.ExtKeyUsageServerAuth
	case "clientAuth":
		usage = x509.ExtKeyUsageClientAuth
	case "any":
		usage = x509.ExtKeyUsageAny
	default:
		fmt.Fprintln(os.Stderr, "ERROR: unknown usage", os.Args[3])
		os.Exit(2)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}
	if len(os.Args) == 5 {
		opts.DNSName = os.Args[4]
	}
	chains, err := cert.Verify(opts)
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	names := []string{}
	for _, c := range chains[0] {
		names = append(names, c.Subject.String())
	}
	fmt.Printf("OK %d chain(s): %s\n", len(chains), strings.Join(names, " <- "))
}
