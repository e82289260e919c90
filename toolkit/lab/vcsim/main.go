// Command vcsim runs govmomi's vCenter simulator as a lab peer for the AppStack toolkit.
//
// It serves the VPX model (datacenter DC0, one standalone host and a three-host cluster, no VMs) on
// plain HTTP, with datastores backed by directories named on the command line, mounted on every host:
//
//	vcsim -listen 127.0.0.1:0 -datastore ds1=/srv/ds1 -datastore vsan1=/srv/vsan1 -vsan vsan1 \
//	      -user administrator@vsphere.local -password-stdin -watch-stdin
//
// With -esx it serves the ESX model instead: one standalone ESXi host (API type HostAgent, datacenter
// ha-datacenter) that a client logs into directly. Given the directories of a running vCenter
// simulator, it is a host of that vCenter's cluster: the same datastores, the same vSAN objects.
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
//   - a vSAN datastore keeps only descriptors and plain files (sidecars) in its directory, as a real
//     vSAN namespace does: a disk's data is an object, kept in "<dir>.vsan-objects/<uuid>" and named by
//     the descriptor's extent line `RW <sectors> VMFS "vsan://<uuid>"`. Neither /folder nor the
//     datastore browser can reach it; only VirtualDiskManager can.
//   - VirtualDiskManager.CopyVirtualDisk_Task reads the source descriptor and its extents (files, or
//     vSAN objects) and writes one extent at the destination: a "<name>-flat.vmdk" beside the new
//     descriptor, or a new vSAN object. The new descriptor names the new extent (the stock simulator
//     copies the descriptor unchanged, so a renamed copy pointed at the source's flat file). A
//     destination that exists is refused (FileAlreadyExists), as vCenter ignores "force".
//   - The destination's provisioning follows the API: vCenter refuses a destSpec (NotImplemented, as
//     the stock simulator and govmomi say) and its copies are preallocated, every block of the flat
//     file allocated; an ESX host honours destSpec, so diskType "thin" leaves all-zero blocks as
//     holes, any other type (or no spec) preallocates. The spec's adapterType becomes the new
//     descriptor's ddb.adapterType. A new vSAN object is always thin (vSAN's default policy).
//   - VirtualDiskManager.DeleteVirtualDisk_Task deletes the descriptor and the extents it names.
//   - -capacity name=bytes makes a datastore that size: free space is the capacity less the bytes its
//     files (and objects) have allocated, and a disk copy that does not fit fails with NoDiskSpace
//     (a preallocated copy before it starts, a thin copy once its data is written).
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
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/google/uuid"
	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
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

// sizeList collects repeated -capacity name=bytes flags.
type sizeList map[string]int64

func (s *sizeList) String() string { return fmt.Sprint(map[string]int64(*s)) }

func (s *sizeList) Set(value string) error {
	name, text, ok := strings.Cut(value, "=")
	size, err := strconv.ParseInt(text, 10, 64)
	if !ok || name == "" || err != nil || size <= 0 {
		return fmt.Errorf("want name=bytes, got %q", value)
	}
	if *s == nil {
		*s = sizeList{}
	}
	(*s)[name] = size
	return nil
}

type options struct {
	esx           bool
	listen        string
	user          string
	passwordStdin bool
	watchStdin    bool
	datastores    datastoreList
	vsan          nameList
	capacity      sizeList
}

type readyLine struct {
	URL         string            `json:"url"`
	Host        string            `json:"host"`
	Port        int               `json:"port"`
	Datacenter  string            `json:"datacenter"`
	Datastores  map[string]string `json:"datastores"`
	VsanObjects map[string]string `json:"vsan_objects"`
}

func parseFlags() *options {
	o := &options{}
	flag.BoolVar(&o.esx, "esx", false, "serve a standalone ESXi host (the ESX model) instead of vCenter")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address to serve on; port 0 picks a free port")
	flag.StringVar(&o.user, "user", "", "the only user name accepted (empty: any non-empty user and password)")
	flag.BoolVar(&o.passwordStdin, "password-stdin", false, "read the password from the first line of stdin")
	flag.BoolVar(&o.watchStdin, "watch-stdin", false, "exit when stdin reaches end of file")
	flag.Var(&o.datastores, "datastore", "name=/dir: a datastore backed by dir (repeatable)")
	flag.Var(&o.vsan, "vsan", "name of a datastore that reports summary.type vsan (repeatable)")
	flag.Var(&o.capacity, "capacity", "name=bytes: the size a datastore reports and enforces (repeatable)")
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
	for name := range o.capacity {
		if _, ok := o.datastores.dirs[name]; !ok {
			return fmt.Errorf("-capacity %q names no -datastore", name)
		}
	}
	disks := &diskLab{objects: map[string]string{}, capacity: o.capacity}
	for _, name := range o.vsan {
		disks.objects[name] = o.datastores.dirs[name] + ".vsan-objects"
		if err := os.MkdirAll(disks.objects[name], 0o700); err != nil {
			return fmt.Errorf("vSAN objects of %s: %w", name, err)
		}
	}

	model := simulator.VPX()
	if o.esx {
		model = simulator.ESX()
	}
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
	dropUnknownDatastores()
	disks.install(model.Service, server.URL)
	guardFolder(model.Service, server.URL)

	if err := announce(server.URL, &o.datastores, disks.objects); err != nil {
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

// dropUnknownDatastores removes from each datacenter the datastores that do not exist: the ESX model's
// datacenter names a stock datastore that it only creates with model.Datastore > 0.
func dropUnknownDatastores() {
	for _, entity := range simulator.Map.All("Datacenter") {
		dc, ok := entity.(*simulator.Datacenter)
		if !ok {
			continue
		}
		simulator.Map.WithLock(dc, func() {
			known := dc.Datastore[:0]
			for _, ref := range dc.Datastore {
				if simulator.Map.Get(ref) != nil {
					known = append(known, ref)
				}
			}
			dc.Datastore = known
		})
	}
}

// guardFolder puts an authentication check in front of the simulator's /folder handler. Host-specific
// ServeMux patterns win over the stock "/folder/" pattern, so this needs no change to the simulator.
func guardFolder(svc *simulator.Service, u *url.URL) {
	handler := folderHandler(svc, u.User)
	for _, host := range serverHosts(u) {
		svc.ServeMux.HandleFunc(host+folderPrefix, handler)
	}
}

// serverHosts are the host names clients use for the server; ServeMux patterns are registered per host.
func serverHosts(u *url.URL) []string {
	seen := map[string]bool{}
	var hosts []string
	for _, host := range []string{u.Hostname(), "127.0.0.1", "localhost"} {
		if !seen[host] {
			seen[host] = true
			hosts = append(hosts, host)
		}
	}
	return hosts
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

func announce(u *url.URL, stores *datastoreList, objects map[string]string) error {
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
	datacenter := ""
	for _, entity := range simulator.Map.All("Datacenter") {
		datacenter = entity.Entity().Name // one in either model: DC0, or ha-datacenter on a host
	}
	line, err := json.Marshal(readyLine{
		URL: plain.String(), Host: host, Port: port, Datacenter: datacenter, Datastores: dirs, VsanObjects: objects,
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

// -- virtual disks: vSAN objects, extent-aware copies, capacity ------------------------------------

const (
	descriptorMaxBytes = 64 << 10 // a text descriptor is a few hundred bytes
	sectorBytes        = 512
	copyBlockBytes     = 1 << 20  // copies read and write this much at a time
	holeBytes          = 64 << 10 // thin copies leave all-zero runs of this size as holes
	vsanScheme         = "vsan://"
)

var extentLine = regexp.MustCompile(`^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]+)"(?:\s+(\d+))?)?\s*$`)

// diskLab holds what the stock simulator lacks for virtual disks: where vSAN objects live, and the
// datastores with a fixed capacity.
type diskLab struct {
	mu       sync.Mutex        // one disk operation at a time, and usage refreshes in between
	objects  map[string]string // vSAN datastore name -> directory of its objects
	capacity sizeList          // datastore name -> capacity in bytes
}

// diskManager replaces the simulator's VirtualDiskManager (same managed object reference).
type diskManager struct {
	*simulator.VirtualDiskManager
	lab *diskLab
}

func (l *diskLab) install(svc *simulator.Service, u *url.URL) {
	stock, ok := simulator.Map.VirtualDiskManager().(*simulator.VirtualDiskManager)
	if ok {
		simulator.Map.Put(&diskManager{VirtualDiskManager: stock, lab: l})
	}
	if len(l.capacity) == 0 {
		return
	}
	l.refreshUsage()
	sdk := func(w http.ResponseWriter, r *http.Request) {
		l.refreshUsage() // what a client reads as free space reflects every write so far
		svc.ServeSDK(w, r)
	}
	for _, host := range serverHosts(u) {
		svc.ServeMux.HandleFunc(host+"/sdk", sdk)
	}
}

func (m *diskManager) CopyVirtualDiskTask(_ *simulator.Context, req *types.CopyVirtualDisk_Task) soap.HasFault {
	task := simulator.CreateTask(m, "copyVirtualDisk", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		var spec *types.VirtualDiskSpec
		if req.DestSpec != nil {
			if simulator.Map.IsVPX() {
				return nil, new(types.NotImplemented) // "the spec param is only valid for ESX"
			}
			spec = req.DestSpec.GetVirtualDiskSpec()
		}
		return nil, m.lab.copyDisk(req.SourceName, req.DestName, spec)
	})
	return &methods.CopyVirtualDisk_TaskBody{Res: &types.CopyVirtualDisk_TaskResponse{Returnval: task.Run()}}
}

func (m *diskManager) DeleteVirtualDiskTask(_ *simulator.Context, req *types.DeleteVirtualDisk_Task) soap.HasFault {
	task := simulator.CreateTask(m, "deleteVirtualDisk", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, m.lab.deleteDisk(req.Name)
	})
	return &methods.DeleteVirtualDisk_TaskBody{Res: &types.DeleteVirtualDisk_TaskResponse{Returnval: task.Run()}}
}

// dsFile is a datastore path resolved to the datastore's name and the file in its backing directory.
type dsFile struct {
	datastore string
	root      string
	abs       string
}

func resolveDatastorePath(name string) (dsFile, types.BaseMethodFault) {
	var p object.DatastorePath
	if !p.FromString(name) {
		return dsFile{}, &types.InvalidDatastorePath{DatastorePath: name}
	}
	for _, entity := range simulator.Map.All("Datastore") {
		ds, ok := entity.(*simulator.Datastore)
		if !ok || ds.Name != p.Datastore {
			continue
		}
		root := filepath.Clean(ds.Info.GetDatastoreInfo().Url)
		abs := filepath.Join(root, filepath.FromSlash(p.Path))
		if abs != root && !strings.HasPrefix(abs, root+string(filepath.Separator)) {
			return dsFile{}, &types.InvalidDatastorePath{DatastorePath: name}
		}
		return dsFile{datastore: ds.Name, root: root, abs: abs}, nil
	}
	return dsFile{}, &types.InvalidDatastore{Name: p.Datastore}
}

func fileFault(fault types.BaseFileFault, file string) types.BaseMethodFault {
	fault.GetFileFault().File = file
	return fault.(types.BaseMethodFault)
}

// extent is one extent line of a text descriptor.
type extent struct {
	sectors int64
	kind    string
	file    string // "" for a ZERO extent
	offset  int64  // in sectors, into file
}

type descriptor struct {
	lines   []string
	extents []extent
	first   int // index in lines of the first extent line
}

func parseDescriptor(data []byte) (*descriptor, bool) {
	if len(data) >= descriptorMaxBytes || strings.HasPrefix(string(data), "KDMV") {
		return nil, false
	}
	d := &descriptor{first: -1}
	for i, line := range strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n") {
		d.lines = append(d.lines, line)
		m := extentLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		sectors, _ := strconv.ParseInt(m[2], 10, 64)
		offset, _ := strconv.ParseInt(m[5], 10, 64)
		d.extents = append(d.extents, extent{sectors: sectors, kind: strings.ToUpper(m[3]), file: m[4], offset: offset})
		if d.first < 0 {
			d.first = i
		}
	}
	return d, len(d.extents) > 0
}

func (d *descriptor) sectors() int64 {
	var n int64
	for _, e := range d.extents {
		n += e.sectors
	}
	return n
}

// render is the descriptor with its extent lines replaced by one extent, for vSAN createType "vmfs",
// and with adapter (a destSpec's adapterType; "" keeps the source's) as ddb.adapterType.
func (d *descriptor) render(kind, file string, vsan bool, adapter string) []byte {
	var out []string
	for i, line := range d.lines {
		if extentLine.MatchString(line) {
			if i == d.first {
				out = append(out, fmt.Sprintf("RW %d %s \"%s\"", d.sectors(), kind, file))
			}
			continue
		}
		key := strings.TrimSpace(line)
		if vsan && strings.HasPrefix(key, "createType") {
			line = `createType="vmfs"`
		}
		if adapter != "" && strings.HasPrefix(key, "ddb.adapterType") {
			line = fmt.Sprintf("ddb.adapterType = \"%s\"", strings.ToLower(adapter))
		}
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n"))
}

// extentPath is where an extent's bytes are: a file beside the descriptor, or a vSAN object.
func (l *diskLab) extentPath(disk dsFile, e extent) (string, types.BaseMethodFault) {
	if strings.HasPrefix(e.file, vsanScheme) {
		dir, ok := l.objects[disk.datastore]
		id := strings.TrimPrefix(e.file, vsanScheme)
		if !ok || id == "" || strings.ContainsAny(id, `/\`) {
			return "", fileFault(new(types.FileNotFound), e.file)
		}
		return filepath.Join(dir, id), nil
	}
	return filepath.Join(filepath.Dir(disk.abs), filepath.FromSlash(e.file)), nil
}

// copyDisk copies a virtual disk; spec is the request's destSpec (nil: none, a preallocated copy).
func (l *diskLab) copyDisk(sourceName, destName string, spec *types.VirtualDiskSpec) types.BaseMethodFault {
	l.mu.Lock()
	defer l.mu.Unlock()
	src, fault := resolveDatastorePath(sourceName)
	if fault != nil {
		return fault
	}
	dst, fault := resolveDatastorePath(destName)
	if fault != nil {
		return fault
	}
	data, err := os.ReadFile(src.abs)
	if err != nil {
		return fileFault(new(types.FileNotFound), sourceName)
	}
	if _, err := os.Stat(dst.abs); err == nil {
		return fileFault(new(types.FileAlreadyExists), destName)
	}
	if info, err := os.Stat(filepath.Dir(dst.abs)); err != nil || !info.IsDir() {
		return fileFault(new(types.FileNotFound), path.Dir(destName))
	}
	desc, ok := parseDescriptor(data)
	if !ok {
		return fileFault(new(types.CannotAccessFile), sourceName) // a hosted sparse disk: not modelled
	}
	_, toVsan := l.objects[dst.datastore]
	thin := toVsan || (spec != nil && spec.DiskType == string(types.VirtualDiskTypeThin))
	adapter := ""
	if spec != nil {
		adapter = spec.AdapterType
	}
	size := desc.sectors() * sectorBytes
	if free, limited := l.free(dst.datastore); limited && !thin && size+int64(len(data)) > free {
		return &types.NoDiskSpace{FileFault: types.FileFault{File: destName}, Datastore: dst.datastore}
	}
	base := strings.TrimSuffix(filepath.Base(dst.abs), ".vmdk")
	kind, ref, target := desc.extents[0].kind, base+"-flat.vmdk", filepath.Join(filepath.Dir(dst.abs), base+"-flat.vmdk")
	if len(desc.extents) > 1 || strings.HasPrefix(desc.extents[0].file, vsanScheme) || kind == "ZERO" {
		kind = "VMFS"
	}
	if toVsan {
		id := uuid.New().String()
		kind, ref, target = "VMFS", vsanScheme+id, filepath.Join(l.objects[dst.datastore], id)
	} else if _, err := os.Stat(target); err == nil {
		return fileFault(new(types.FileAlreadyExists), target)
	}
	if fault := l.copyExtents(src, desc, target, thin); fault != nil {
		return fault
	}
	if _, limited := l.free(dst.datastore); limited && thin && l.usage(dst.datastore) > l.capacity[dst.datastore] {
		_ = os.Remove(target) // a thin copy fills the datastore as it goes; this one did not fit
		return &types.NoDiskSpace{FileFault: types.FileFault{File: destName}, Datastore: dst.datastore}
	}
	if err := writeAtomic(dst.abs, desc.render(kind, ref, toVsan, adapter)); err != nil {
		_ = os.Remove(target)
		return fileFault(new(types.CannotCreateFile), destName)
	}
	return nil
}

// copyExtents writes the extents of desc, in order, as one file at target: with thin, all-zero blocks
// stay holes; without, every block is allocated (a preallocated disk).
func (l *diskLab) copyExtents(src dsFile, desc *descriptor, target string, thin bool) types.BaseMethodFault {
	tmp := target + ".copying"
	out, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600) // read too: preallocate's fallback
	if err != nil {
		return fileFault(new(types.CannotCreateFile), target)
	}
	fail := func(fault types.BaseMethodFault) types.BaseMethodFault {
		_ = out.Close()
		_ = os.Remove(tmp)
		return fault
	}
	var at int64
	for _, e := range desc.extents {
		length := e.sectors * sectorBytes
		if e.file != "" && e.kind != "ZERO" {
			from, fault := l.extentPath(src, e)
			if fault != nil {
				return fail(fault)
			}
			if err := copySparse(out, at, from, e.offset*sectorBytes, length); err != nil {
				return fail(fileFault(new(types.FileNotFound), e.file))
			}
		}
		at += length
	}
	if err := out.Truncate(at); err != nil {
		return fail(fileFault(new(types.CannotCreateFile), target))
	}
	if !thin {
		if err := preallocate(out, at); err != nil {
			return fail(&types.NoDiskSpace{FileFault: types.FileFault{File: target}})
		}
	}
	if err := out.Close(); err != nil {
		_ = os.Remove(tmp)
		return fileFault(new(types.CannotCreateFile), target)
	}
	if err := os.Rename(tmp, target); err != nil {
		_ = os.Remove(tmp)
		return fileFault(new(types.CannotCreateFile), target)
	}
	return nil
}

// copySparse copies length bytes of file from at offset into out at position at; zero runs stay holes.
func copySparse(out *os.File, at int64, file string, offset, length int64) error {
	in, err := os.Open(file)
	if err != nil {
		return err
	}
	defer in.Close()
	block := make([]byte, copyBlockBytes)
	for done := int64(0); done < length; {
		n := int64(len(block))
		if length-done < n {
			n = length - done
		}
		got, err := in.ReadAt(block[:n], offset+done)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if got == 0 {
			break // a short extent file reads as zeros
		}
		for piece := 0; piece < got; piece += holeBytes {
			end := piece + holeBytes
			if end > got {
				end = got
			}
			if isZero(block[piece:end]) {
				continue
			}
			if _, err := out.WriteAt(block[piece:end], at+done+int64(piece)); err != nil {
				return err
			}
		}
		done += int64(got)
	}
	return nil
}

// preallocate gives every block of the first size bytes of out storage, as a preallocated (thick) disk
// has: fallocate where the file system can, else every block read and written back (holes become zeros).
func preallocate(out *os.File, size int64) error {
	if size == 0 || syscall.Fallocate(int(out.Fd()), 0, 0, size) == nil {
		return nil
	}
	block := make([]byte, copyBlockBytes)
	for at := int64(0); at < size; at += copyBlockBytes {
		n := int64(len(block))
		if size-at < n {
			n = size - at
		}
		if _, err := out.ReadAt(block[:n], at); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if _, err := out.WriteAt(block[:n], at); err != nil {
			return err
		}
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func writeAtomic(name string, data []byte) error {
	tmp := name + ".writing"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

func (l *diskLab) deleteDisk(name string) types.BaseMethodFault {
	l.mu.Lock()
	defer l.mu.Unlock()
	disk, fault := resolveDatastorePath(name)
	if fault != nil {
		return fault
	}
	data, err := os.ReadFile(disk.abs)
	if err != nil {
		return fileFault(new(types.FileNotFound), name)
	}
	if desc, ok := parseDescriptor(data); ok {
		for _, e := range desc.extents {
			if e.file == "" {
				continue
			}
			if file, fault := l.extentPath(disk, e); fault == nil {
				if err := os.Remove(file); err != nil && !os.IsNotExist(err) {
					return fileFault(new(types.CannotDeleteFile), e.file)
				}
			}
		}
	}
	if err := os.Remove(disk.abs); err != nil {
		return fileFault(new(types.CannotDeleteFile), name)
	}
	return nil
}

// free is the free space of a datastore with a fixed capacity (false: not limited).
func (l *diskLab) free(name string) (int64, bool) {
	capacity, limited := l.capacity[name]
	if !limited {
		return 0, false
	}
	used := l.usage(name)
	if used > capacity {
		return 0, true
	}
	return capacity - used, true
}

// usage is the storage every file of a datastore has allocated, vSAN objects included (a hole takes none).
func (l *diskLab) usage(name string) int64 {
	var used int64
	var dirs []string
	for _, entity := range simulator.Map.All("Datastore") {
		if ds, ok := entity.(*simulator.Datastore); ok && ds.Name == name {
			dirs = append(dirs, ds.Info.GetDatastoreInfo().Url)
			break
		}
	}
	if objects, ok := l.objects[name]; ok {
		dirs = append(dirs, objects)
	}
	for _, dir := range dirs {
		_ = filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
			if err == nil && info.Mode().IsRegular() {
				used += allocated(info)
			}
			return nil
		})
	}
	return used
}

// allocated is the bytes a file has on disk; its apparent size where the platform does not say.
func allocated(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512 // st_blocks counts 512-byte units whatever the file system's block size
	}
	return info.Size()
}

// refreshUsage sets the reported capacity and free space of the datastores with a fixed capacity.
func (l *diskLab) refreshUsage() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, entity := range simulator.Map.All("Datastore") {
		ds, ok := entity.(*simulator.Datastore)
		if !ok {
			continue
		}
		capacity, limited := l.capacity[ds.Name]
		if !limited {
			continue
		}
		free, _ := l.free(ds.Name)
		simulator.Map.WithLock(ds, func() {
			ds.Summary.Capacity = capacity
			ds.Summary.FreeSpace = free
			info := ds.Info.GetDatastoreInfo()
			info.FreeSpace = free
			info.MaxFileSize = free
		})
	}
}
