// Command vcsim runs govmomi's vCenter simulator as a lab peer for the AppStack toolkit.
//
// It serves the VPX model (datacenter DC0, one standalone host and a three-host cluster, no VMs) on
// plain HTTP, with datastores backed by directories named on the command line, mounted on every host:
//
//	vcsim -listen 127.0.0.1:0 -datastore ds1=/srv/ds1 -datastore vsan1=/srv/vsan1 -vsan vsan1 \
//	      -user administrator@vsphere.local -password-stdin -watch-stdin
//
// When ready it prints one JSON line on stdout: {"url": ..., "host": ..., "port": ..., "datacenter": ...,
// "datastores": {name: dir}}. It stops on SIGTERM or SIGINT, and with -watch-stdin when stdin closes,
// so it never outlives the process that started it.
//
// Differences from the stock simulator, to behave like a real vCenter:
//   - /folder (datastore HTTP) needs a live session cookie (vmware_soap_session) or HTTP basic
//     credentials that would log in; anything else gets 401.
//   - a PUT that creates a file answers 201 Created, one that replaces a file 200 OK.
//   - datastores report summary.type "VMFS", or "vsan" when named by -vsan.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
)

const folderPrefix = "/folder/"

// datastoreList collects repeated -datastore name=/dir flags, in order.
type datastoreList struct {
	names []string
	dirs  map[string]string
}

func (d *datastoreList) String() string {
	parts := make([]string, 0, len(d.names))
	for _, name := range d.names {
		parts = append(parts, name+"="+d.dirs[name])
	}
	return strings.Join(parts, ",")
}

func (d *datastoreList) Set(value string) error {
	name, dir, ok := strings.Cut(value, "=")
	if !ok || name == "" || dir == "" {
		return fmt.Errorf("want name=/dir, got %q", value)
	}
	if d.dirs == nil {
		d.dirs = map[string]string{}
	}
	if _, seen := d.dirs[name]; seen {
		return fmt.Errorf("datastore %q given twice", name)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	d.names = append(d.names, name)
	d.dirs[name] = abs
	return nil
}

// nameList collects a repeated string flag.
type nameList []string

func (n *nameList) String() string { return strings.Join(*n, ",") }

func (n *nameList) Set(value string) error {
	*n = append(*n, value)
	return nil
}

type options struct {
	listen        string
	user          string
	passwordStdin bool
	watchStdin    bool
	datastores    datastoreList
	vsan          nameList
}

type readyLine struct {
	URL        string            `json:"url"`
	Host       string            `json:"host"`
	Port       int               `json:"port"`
	Datacenter string            `json:"datacenter"`
	Datastores map[string]string `json:"datastores"`
}

func parseFlags() *options {
	o := &options{}
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to serve on; port 0 picks a free port")
	flag.StringVar(&o.user, "user", "", "the only user name accepted (empty: any non-empty user and password)")
	flag.BoolVar(&o.passwordStdin, "password-stdin", false, "read the password from the first line of stdin")
	flag.BoolVar(&o.watchStdin, "watch-stdin", false, "exit when stdin reaches end of file")
	flag.Var(&o.datastores, "datastore", "name=/dir: a datastore backed by dir (repeatable)")
	flag.Var(&o.vsan, "vsan", "name of a datastore that reports summary.type vsan (repeatable)")
	flag.Parse()
	return o
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("vcsim: ")
	if err := run(parseFlags()); err != nil {
		log.Fatal(err)
	}
}

func run(o *options) error {
	stdin := bufio.NewReader(os.Stdin)
	listen := &url.URL{Host: o.listen}
	if o.user != "" || o.passwordStdin {
		password, err := readPassword(stdin, o.passwordStdin)
		if err != nil {
			return err
		}
		listen.User = url.UserPassword(o.user, password)
	}
	for _, name := range o.vsan {
		if _, ok := o.datastores.dirs[name]; !ok {
			return fmt.Errorf("-vsan %q names no -datastore", name)
		}
	}

	model := simulator.VPX()
	model.Datastore = 0 // only the datastores asked for; the stock LocalDS_0 lives in a temp dir
	model.Machine = 0   // stock VMs need LocalDS_0
	if err := model.Create(); err != nil {
		return fmt.Errorf("create model: %w", err)
	}
	defer model.Remove()

	model.Service.Listen = listen
	server := model.Service.NewServer()
	defer server.Close()

	ctx := context.Background()
	if err := addDatastores(ctx, server.URL, &o.datastores); err != nil {
		return err
	}
	setDatastoreTypes(o.vsan)
	guardFolder(model.Service, server.URL)

	if err := announce(server.URL, &o.datastores); err != nil {
		return err
	}
	waitForStop(stdin, o.watchStdin)
	return nil
}

func readPassword(stdin *bufio.Reader, fromStdin bool) (string, error) {
	if !fromStdin {
		return "", errors.New("-user needs -password-stdin")
	}
	line, err := stdin.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read password: %w", err)
	}
	password := strings.TrimRight(line, "\r\n")
	if password == "" {
		return "", errors.New("empty password on stdin")
	}
	return password, nil
}

// addDatastores mounts each backing directory as a local datastore on every host, as the stock
// model does for LocalDS_0, through the simulator's own API.
func addDatastores(ctx context.Context, u *url.URL, stores *datastoreList) error {
	if len(stores.names) == 0 {
		return nil
	}
	client, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		return fmt.Errorf("connect to own server: %w", err)
	}
	defer func() { _ = client.Logout(ctx) }()

	hosts := simulator.Map.All("HostSystem")
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Entity().Name < hosts[j].Entity().Name })
	for _, name := range stores.names {
		dir := stores.dirs[name]
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("datastore %s: %w", name, err)
		}
		for _, entity := range hosts {
			host := object.NewHostSystem(client.Client, entity.Reference())
			dss, err := host.ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return fmt.Errorf("datastore system of %s: %w", host.Reference().Value, err)
			}
			if _, err := dss.CreateLocalDatastore(ctx, name, dir); err != nil {
				return fmt.Errorf("create datastore %s on %s: %w", name, host.Reference().Value, err)
			}
		}
	}
	return nil
}

func setDatastoreTypes(vsan []string) {
	isVsan := map[string]bool{}
	for _, name := range vsan {
		isVsan[name] = true
	}
	for _, entity := range simulator.Map.All("Datastore") {
		ds, ok := entity.(*simulator.Datastore)
		if !ok {
			continue
		}
		simulator.Map.WithLock(ds, func() {
			if isVsan[ds.Name] {
				ds.Summary.Type = "vsan"
			} else {
				ds.Summary.Type = "VMFS"
			}
		})
	}
}

// guardFolder puts an authentication check in front of the simulator's /folder handler. Host-specific
// ServeMux patterns win over the stock "/folder/" pattern, so this needs no change to the simulator.
func guardFolder(svc *simulator.Service, u *url.URL) {
	handler := folderHandler(svc, u.User)
	seen := map[string]bool{}
	for _, host := range []string{u.Hostname(), "127.0.0.1", "localhost"} {
		if !seen[host] {
			seen[host] = true
			svc.ServeMux.HandleFunc(host+folderPrefix, handler)
		}
	}
}

func folderHandler(svc *simulator.Service, login *url.Userinfo) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !hasSession(svc, r) && !basicAuthOK(r, login) {
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			http.Error(w, "401 Unauthorized", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodPut {
			svc.ServeDatastore(w, r)
			return
		}
		existed := targetExists(svc, r)
		rec := &statusRecorder{ResponseWriter: w}
		svc.ServeDatastore(rec, r)
		if rec.status == 0 {
			if existed {
				w.WriteHeader(http.StatusOK)
			} else {
				w.WriteHeader(http.StatusCreated)
			}
		}
	}
}

// statusRecorder notes whether the wrapped handler chose a status itself.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func targetExists(svc *simulator.Service, r *http.Request) bool {
	query := r.URL.Query()
	for _, entity := range simulator.Map.All("Datastore") {
		ds, ok := entity.(*simulator.Datastore)
		if !ok || ds.Name != query.Get("dsName") {
			continue
		}
		rel := strings.TrimPrefix(r.URL.Path, folderPrefix)
		_, err := os.Stat(path.Join(ds.Info.GetDatastoreInfo().Url, rel))
		return err == nil
	}
	return false
}

// hasSession asks the SOAP handler itself whether the request's session cookie is logged in:
// QueryOptions needs a session and changes nothing.
func hasSession(svc *simulator.Service, r *http.Request) bool {
	cookie, err := r.Cookie(soap.SessionCookieName)
	if err != nil || cookie.Value == "" {
		return false
	}
	setting := simulator.Map.OptionManager().Reference()
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+
		`<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">`+
		`<soapenv:Body><QueryOptions xmlns="urn:vim25"><_this type="%s">%s</_this>`+
		`<name>vcsim.server.url</name></QueryOptions></soapenv:Body></soapenv:Envelope>`,
		setting.Type, setting.Value)
	probe := httptest.NewRequest(http.MethodPost, "/sdk", strings.NewReader(body))
	probe.Header.Set("Content-Type", "text/xml; charset=utf-8")
	probe.AddCookie(&http.Cookie{Name: soap.SessionCookieName, Value: cookie.Value})
	rec := httptest.NewRecorder()
	svc.ServeSDK(rec, probe)
	return rec.Code == http.StatusOK
}

func basicAuthOK(r *http.Request, login *url.Userinfo) bool {
	user, password, ok := r.BasicAuth()
	if !ok || user == "" || password == "" {
		return false
	}
	if login == nil || login == simulator.DefaultLogin {
		return true
	}
	want, _ := login.Password()
	return user == login.Username() && password == want
}

func announce(u *url.URL, stores *datastoreList) error {
	host, portText, err := net.SplitHostPort(u.Host)
	if err != nil {
		return err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return err
	}
	plain := *u
	plain.User = nil
	dirs := map[string]string{}
	for _, name := range stores.names {
		dirs[name] = stores.dirs[name]
	}
	line, err := json.Marshal(readyLine{
		URL: plain.String(), Host: host, Port: port, Datacenter: "DC0", Datastores: dirs,
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(os.Stdout, string(line))
	return err
}

func waitForStop(stdin *bufio.Reader, watchStdin bool) {
	stop := make(chan struct{}, 2)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		stop <- struct{}{}
	}()
	if watchStdin {
		go func() {
			_, _ = io.Copy(io.Discard, stdin)
			stop <- struct{}{}
		}()
	}
	<-stop
}
