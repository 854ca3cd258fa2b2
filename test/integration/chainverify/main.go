// chainverify: verify a certificate chain with Go's crypto/x509 (standard library only).
//
//	chainverify <roots.pem> <chain.pem> <serverAuth|clientAuth|any>
//
// roots.pem holds the trusted roots (one or more); chain.pem the leaf first, then any
// intermediate or cross-signed certificates sent with it. Exit 0 and "OK <chain>" on success;
// exit 1 and "FAIL: <reason>" when verification fails; exit 2 on bad usage or unreadable input.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

func readCerts(path string) []*x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(2)
	}
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fmt.Println("FAIL: parse:", err)
			os.Exit(1)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		fmt.Fprintln(os.Stderr, "ERROR: no PEM CERTIFICATE block in", path)
		os.Exit(2)
	}
	return out
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: chainverify <roots.pem> <chain.pem> <serverAuth|clientAuth|any>")
		os.Exit(2)
	}
	roots := x509.NewCertPool()
	for _, c := range readCerts(os.Args[1]) {
		roots.AddCert(c)
	}
	chain := readCerts(os.Args[2])
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
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
	chains, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
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
