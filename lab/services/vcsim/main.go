// Command vcsim serves govmomi's simulated vCenter (the simulator package's VPX model) on
// 127.0.0.1 for the lab's VMware driver tests.
//
// It prints the SDK URL (without credentials) on one line of stdout, then serves until
// SIGTERM or SIGINT, or until its parent process dies, and removes the model's datastore
// directories on the way out. The login it accepts comes from the environment
// (UCVM_VCSIM_USER, UCVM_VCSIM_PASSWORD), not from argv, which any local user can read.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	flag.Parse()
	parent := os.Getppid()

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: cannot create the vCenter model: %v", err)
	}
	defer model.Remove()

	model.Service.TLS = new(tls.Config)
	model.Service.Listen = &url.URL{Host: *listen, User: login()}
	server := model.Service.NewServer()
	defer server.Close()

	shown := *server.URL
	shown.User = nil
	fmt.Println(shown.String())

	waitForEnd(parent)
}

func login() *url.Userinfo {
	user, password := os.Getenv("UCVM_VCSIM_USER"), os.Getenv("UCVM_VCSIM_PASSWORD")
	if user == "" || password == "" {
		return nil // the simulator then accepts any non-empty user and password
	}
	return url.UserPassword(user, password)
}

// waitForEnd returns on SIGTERM or SIGINT, or once the parent is gone (the process is then
// re-parented, so its parent id changes), so that a crashed test run leaves no server behind.
func waitForEnd(parent int) {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-signals:
			return
		case <-tick.C:
			if os.Getppid() != parent {
				return
			}
		}
	}
}
