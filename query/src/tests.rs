use super::*;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::collect;
use model::{Event, batch_of};
use proptest::prelude::*;
use storage::{SegmentOptions, StoreOptions};

const T0: i64 = 1_800_000_000_000_000_000;

fn event(i: u64, ns: &str, pod: &str, exe: &str, dst: Option<&str>) -> Event {
    Event {
        ts: T0 + (i as i64) * 1_000_000_000,
        kind: if dst.is_some() {
            "network_connect"
        } else {
            "process_exec"
        }
        .into(),
        source: "test".into(),
        event_id: Some(i as i64),
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        container_id: Some(format!("{pod}-c")),
        exe: Some(exe.into()),
        dst_ip: dst.map(Into::into),
        ..Default::default()
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        background: false,
        memtable_max_rows: usize::MAX / 4,
        segment: SegmentOptions {
            row_group_rows: 64,
            zstd_level: 1,
        },
        ..Default::default()
    }
}

async fn run(ctx: &SessionContext, sql: &str) -> (Vec<RecordBatch>, Option<ScanStats>) {
    let df = ctx.sql(sql).await.unwrap();
    let plan = df.create_physical_plan().await.unwrap();
    let stats = ScanExec::find_stats(&plan);
    let batches = collect(plan, ctx.task_ctx()).await.unwrap();
    (batches, stats)
}

fn text(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

/// Builds a store of 4 segments (hours) plus a memtable.
fn fixture(dir: &std::path::Path) -> Store {
    let (store, _) = Store::open(dir, options()).unwrap();
    let pods = ["api-1", "api-2", "db-0", "web-7"];
    let exes = ["/bin/sh", "/usr/bin/curl", "/usr/sbin/tcpdump"];
    for hour in 0..4u64 {
        let events: Vec<Event> = (0..500)
            .map(|j| {
                let i = hour * 3600 + j * 7;
                let ns = if j % 5 == 0 { "billing" } else { "frontend" };
                let pod = pods[((j * 13 + hour) % 4) as usize];
                let dst = (j % 3 == 0).then(|| format!("10.1.{}.{}", j % 4, j % 9));
                event(
                    i,
                    ns,
                    &format!("{ns}-{pod}"),
                    exes[(j % 3) as usize],
                    dst.as_deref(),
                )
            })
            .collect();
        store.append(batch_of(&events)).unwrap();
        store.flush().unwrap();
    }
    let mem: Vec<Event> = (0..50)
        .map(|j| event(5 * 3600 + j, "billing", "billing-api-1", "/bin/sh", None))
        .collect();
    store.append(batch_of(&mem)).unwrap();
    store
}

/// The fixture store, read with the index and without it.
struct IndexedAndFull {
    _dir: tempfile::TempDir,
    indexed: SessionContext,
    full: SessionContext,
}

async fn indexed_and_full() -> IndexedAndFull {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    IndexedAndFull {
        indexed: session(&store, IndexUse::On).await.unwrap(),
        full: session(&store, IndexUse::Off).await.unwrap(),
        _dir: dir,
    }
}

impl IndexedAndFull {
    /// Runs `sql` both ways, checks that the answers are equal, and returns the indexed scan's
    /// stats and the full scan's.
    async fn same_answer(&self, sql: &str) -> (ScanStats, ScanStats) {
        let (a, stats) = run(&self.indexed, sql).await;
        let (b, full_stats) = run(&self.full, sql).await;
        assert_eq!(text(&a), text(&b), "{sql}");
        (stats.unwrap(), full_stats.unwrap())
    }

    /// [`same_answer`](Self::same_answer) for plans that may not scan `events` at all.
    async fn same_answer_anyhow(&self, sql: &str) {
        let (a, _) = run(&self.indexed, sql).await;
        let (b, _) = run(&self.full, sql).await;
        assert_eq!(text(&a), text(&b), "{sql}");
        assert!(!a.iter().all(|b| b.num_rows() == 0), "{sql}: no rows");
    }
}

#[tokio::test]
async fn pod_lookup_skips_segments_and_row_groups_and_matches_full_scan() {
    let both = indexed_and_full().await;
    let sql = "SELECT count(*) AS n, min(ts) AS first FROM events WHERE pod = 'billing-db-0'";
    let (stats, full_stats) = both.same_answer(sql).await;
    assert_eq!(stats.segments_total, 4);
    // 25 of 500 rows per segment, contiguous by the sort order: at most 2 of 8 row groups each.
    assert!(stats.row_groups_scanned <= 2 * 4, "{stats:?}");
    assert_eq!(stats.rows_selected_by_index, 100);
    assert_eq!(full_stats.row_groups_scanned, stats.row_groups_total);

    // A time range outside every segment reads only the memtable.
    let (_, stats) = run(
        &both.indexed,
        "SELECT * FROM events WHERE ts > TIMESTAMP '2030-01-01T00:00:00Z'",
    )
    .await;
    assert_eq!(stats.unwrap().segments_scanned, 0);
    // A pod no segment lists prunes every segment by the manifest summaries.
    let (rows, stats) = run(&both.full, "SELECT * FROM events WHERE pod = 'nope'").await;
    assert_eq!(stats.unwrap().segments_scanned, 0);
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
}

#[tokio::test]
async fn lookups_in_a_column_without_values_skip_the_segments_unopened() {
    let both = indexed_and_full().await;
    // The fixture's events have no session id; a third of them have a destination. NULL
    // tests and columns with values are not pruned by it.
    for (sql, scanned) in [
        ("SELECT event_id FROM events WHERE session_id = 'x'", 0),
        (
            "SELECT event_id FROM events WHERE session_id IN ('x', 'y')",
            0,
        ),
        (
            "SELECT event_id FROM events WHERE session_id IS NULL ORDER BY event_id",
            4,
        ),
        (
            "SELECT event_id FROM events WHERE dst_ip = '10.1.0.0' ORDER BY event_id",
            4,
        ),
    ] {
        let (stats, full_stats) = both.same_answer(sql).await;
        let both_scanned = (stats.segments_scanned, full_stats.segments_scanned);
        assert_eq!(both_scanned, (scanned, scanned), "{sql}");
    }
}

#[tokio::test]
async fn a_selection_of_fewer_row_groups_than_partitions_keeps_its_files_whole() {
    let both = indexed_and_full().await;
    let ctx = &both.indexed;
    for set in [
        "SET datafusion.execution.target_partitions = 4",
        // Small files too are cut into byte ranges, as the 10 M store's segments are.
        "SET datafusion.optimizer.repartition_file_min_size = 0",
    ] {
        ctx.sql(set).await.unwrap().collect().await.unwrap();
    }
    // One pod in the first hour's segment: its 25 rows lie in one or two row groups of 64.
    let sql = "SELECT event_id FROM events WHERE pod = 'billing-db-0' \
               AND ts < TIMESTAMP '2027-01-15T09:00:00Z'";
    let plan = plan_text(ctx, sql).await;
    assert!(plan.contains("file_groups={1 group: [["), "{plan}");
    assert!(
        !plan.contains(".parquet:"),
        "a file cut into byte ranges: {plan}"
    );
    // Every row group: DataFusion still shares the segments' bytes among the partitions.
    let plan = plan_text(ctx, "SELECT event_id FROM events WHERE exe = '/bin/sh'").await;
    assert!(plan.contains("file_groups={4 groups: [["), "{plan}");
}

/// The query's filters reach the Parquet scan once: the table hands them to it, and the scan
/// node stops DataFusion from pushing them down again, which made the scan's predicate
/// `A AND A` (every pruning check and row filter evaluated twice). A top-k's dynamic filter,
/// pushed after optimisation, still reaches the scan.
#[tokio::test]
async fn a_query_filter_reaches_the_parquet_scan_once() {
    let both = indexed_and_full().await;
    for ctx in [&both.indexed, &both.full] {
        // A substring search: the scan filters rows while decoding (pushdown on), the case in
        // which the scan accepted DataFusion's pushdown and doubled the predicate.
        let sql = "SELECT event_id FROM events WHERE exe LIKE '%curl%' AND pod = 'billing-db-0'";
        let plan = plan_text(ctx, sql).await;
        let scan = plan
            .lines()
            .find(|l| l.contains("DataSourceExec") && l.contains("predicate="))
            .unwrap_or_else(|| panic!("no Parquet scan with a predicate: {plan}"));
        let predicate = scan
            .split(" predicate=")
            .nth(1)
            .and_then(|p| p.split(", pruning_predicate=").next())
            .unwrap();
        assert_eq!(predicate.matches(" LIKE ").count(), 1, "{scan}");
        let plan = plan_text(
            ctx,
            "SELECT event_id FROM events WHERE exe = '/bin/sh' ORDER BY ts DESC LIMIT 3",
        )
        .await;
        assert!(
            plan.lines()
                .any(|l| l.contains("DataSourceExec") && l.contains("DynamicFilter")),
            "{plan}"
        );
    }
}

#[tokio::test]
async fn an_or_of_indexed_columns_is_a_union_of_lookups() {
    let both = indexed_and_full().await;
    // 10.1.3.3 is a destination in the fixture; the source side has no values, so the union
    // is the destination's rows; a non-indexed disjunct (source) leaves the index out.
    for (sql, by_index) in [
        (
            "SELECT event_id FROM events WHERE dst_ip = '10.1.3.3' OR src_ip = '10.1.3.3' \
             ORDER BY event_id",
            true,
        ),
        (
            "SELECT event_id FROM events WHERE (pod = 'billing-db-0' OR dst_ip IN ('10.1.3.3', \
             '10.1.2.6')) AND kind = 'network_connect' ORDER BY event_id",
            true,
        ),
        (
            "SELECT event_id FROM events WHERE dst_ip = '10.1.3.3' OR source = 'tetragon' \
             ORDER BY event_id",
            false,
        ),
    ] {
        let (stats, _) = both.same_answer(sql).await;
        let all_rows = 4 * 500;
        if by_index {
            assert!(stats.rows_selected_by_index > 0, "{sql}: {stats:?}");
            assert!(
                stats.rows_selected_by_index < all_rows / 2,
                "{sql}: {stats:?}"
            );
        } else {
            assert_eq!(stats.rows_selected_by_index, 0, "{sql}: {stats:?}");
        }
    }
}

#[tokio::test]
async fn derived_tables_are_recomputed_when_events_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let sql = "SELECT namespace, pod FROM pods ORDER BY namespace, pod";
    let (before, _) = run(&ctx, sql).await;
    assert!(!text(&before).contains("billing-new-0"));
    // Kept: the same session answers again from the rows computed the first time.
    let version = store.version();
    assert_eq!(text(&run(&ctx, sql).await.0), text(&before));
    store
        .append(batch_of(&[event(
            9 * 3600,
            "billing",
            "billing-new-0",
            "/bin/sh",
            None,
        )]))
        .unwrap();
    assert_ne!(store.version(), version);
    let (after, _) = run(&ctx, sql).await;
    assert!(text(&after).contains("billing-new-0"), "{}", text(&after));
    let fresh = session(&store, IndexUse::On).await.unwrap();
    assert_eq!(text(&after), text(&run(&fresh, sql).await.0));
    // A flush moves rows without changing them: same version.
    let version = store.version();
    store.flush().unwrap();
    assert_eq!(store.version(), version);
}

#[tokio::test]
async fn memtable_rows_are_answered_with_segment_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let (rows, _) = run(&ctx, "SELECT count(*) FROM events").await;
    assert!(text(&rows).contains("| 2050 "), "{}", text(&rows));
    let (rows, _) = run(
        &ctx,
        "SELECT count(*) FROM process_events WHERE binary_name = 'tcpdump'",
    )
    .await;
    assert!(text(&rows).contains("| 664 "), "{}", text(&rows));
}

#[tokio::test]
async fn substring_searches_are_answered_from_the_distinct_values() {
    let both = indexed_and_full().await;
    // Of the segments' 2 000 rows, 668 ran /bin/sh, 668 curl and 664 tcpdump (j % 3 == 0, 1, 2).
    for (sql, selected) in [
        (
            "SELECT event_id FROM events WHERE exe LIKE '%tcpdump' ORDER BY event_id",
            Some(664),
        ),
        (
            "SELECT event_id FROM events WHERE exe ~ 'curl|tcpdump' ORDER BY event_id",
            Some(1332),
        ),
        (
            "SELECT event_id FROM events WHERE upper(exe) = '/BIN/SH' ORDER BY event_id",
            Some(668),
        ),
        // A test that keeps every value narrows nothing (it would only drop NULLs, at the
        // price of a union): every row of the segments is read.
        (
            "SELECT event_id FROM events WHERE exe IS NOT NULL ORDER BY event_id",
            Some(2000),
        ),
        // Tests that keep NULLs, or read another column too, are left to the scan.
        (
            "SELECT event_id FROM events WHERE exe IS NULL ORDER BY event_id",
            None,
        ),
        (
            "SELECT event_id FROM events WHERE coalesce(exe, pod) LIKE '%sh' ORDER BY event_id",
            None,
        ),
    ] {
        let (stats, _) = both.same_answer(sql).await;
        match selected {
            Some(n) => assert_eq!(stats.rows_selected_by_index, n, "{sql}: {stats:?}"),
            None => assert_eq!(stats.rows_selected_by_index, 0, "{sql}: {stats:?}"),
        }
    }
}

/// The physical plan of `sql`, as `EXPLAIN` prints it.
async fn plan_text(ctx: &SessionContext, sql: &str) -> String {
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
}

#[tokio::test]
async fn grouped_counts_are_answered_from_the_indexes() {
    let both = indexed_and_full().await;
    let sql = "SELECT namespace, pod, count(*) AS n FROM events \
               WHERE kind = 'network_connect' AND namespace <> '' AND pod <> '' \
               GROUP BY namespace, pod ORDER BY namespace, pod";
    both.same_answer_anyhow(sql).await;
    let plan = plan_text(&both.indexed, sql).await;
    // The segments' counts come from their indexes; only the memtable is read.
    assert!(
        plan.contains("KtrailIndexCountExec: group_by=[namespace, pod], segments=4"),
        "{plan}"
    );
    assert!(!plan.contains("parquet"), "{plan}");
    assert!(plan.contains("partition_sizes"), "{plan}");
    // Without GROUP BY: one count.
    let sql = "SELECT count(*) AS n FROM events WHERE kind = 'network_connect' OR pod = 'x'";
    both.same_answer_anyhow(sql).await;
    let plan = plan_text(&both.indexed, sql).await;
    assert!(
        plan.contains("KtrailIndexCountExec: group_by=[], segments=4"),
        "{plan}"
    );
    // A count with a test the index cannot answer (time) is left to the scan.
    let sql = "SELECT pod, count(*) FROM events WHERE ts >= to_timestamp_nanos(0) \
               GROUP BY pod ORDER BY pod";
    both.same_answer_anyhow(sql).await;
    let plan = plan_text(&both.indexed, sql).await;
    assert!(!plan.contains("KtrailIndexCountExec"), "{plan}");
    assert!(plan.contains("KtrailScanExec"), "{plan}");
}

#[tokio::test]
async fn explain_analyze_shows_what_was_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let (rows, _) = run(
        &ctx,
        "EXPLAIN ANALYZE SELECT * FROM events WHERE pod = 'billing-db-0'",
    )
    .await;
    let plan = text(&rows);
    assert!(plan.contains("KtrailScanExec: segments=4/4"), "{plan}");
    assert!(plan.contains("row_groups_skipped="), "{plan}");
}

const NAMESPACES: &[&str] = &["billing", "frontend", "kube-system"];
const PODS: &[&str] = &["a", "b", "c", "d", "e"];
const EXES: &[&str] = &[
    "/bin/sh",
    "/usr/bin/curl",
    "/usr/sbin/tcpdump",
    "/usr/bin/python3",
];
const IPS: &[&str] = &["10.0.0.1", "10.0.0.2", "1.2.3.4", "8.8.8.8"];
/// Command lines; the last is made unique per row, so that free text sometimes repeats too
/// little to be indexed.
const ARGS: &[&str] = &["-w /tmp/x.pcap", "-sS http://a", "", "-c 'id'", "unique"];

/// GROUP BY lists for grouped counts: columns with and without NULLs, free text included.
const GROUPINGS: &[&str] = &[
    "namespace",
    "namespace, pod",
    "dst_ip",
    "pod, args",
    "kind, src_ip",
];

type ArbEvent = (u32, usize, usize, usize, Option<usize>, Option<usize>);

fn arb_event() -> impl Strategy<Value = ArbEvent> {
    (
        0u32..4 * 3600,
        0..NAMESPACES.len(),
        0..PODS.len(),
        0..EXES.len(),
        prop::option::of(0..IPS.len()),
        prop::option::of(0..ARGS.len()),
    )
}

fn arb_predicate() -> impl Strategy<Value = String> {
    let ns = prop::sample::select(NAMESPACES).prop_map(|v| format!("namespace = '{v}'"));
    let pod = prop::sample::select(PODS).prop_map(|v| format!("pod = '{v}'"));
    let pods = prop::sample::subsequence(PODS, 1..3).prop_map(|v| {
        format!(
            "pod IN ({})",
            v.iter()
                .map(|p| format!("'{p}'"))
                .collect::<Vec<_>>()
                .join(",")
        )
    });
    let bin = prop::sample::select(EXES)
        .prop_map(|v| format!("binary_name = '{}'", v.rsplit('/').next().unwrap()));
    let ip = prop::sample::select(IPS).prop_map(|v| format!("dst_ip = '{v}'"));
    let src = prop::sample::select(IPS).prop_map(|v| format!("src_ip = '{v}'"));
    let time = (0i64..4 * 3600)
        .prop_map(|s| format!("ts >= to_timestamp_nanos({})", T0 + s * 1_000_000_000));
    // Tests the index answers from the distinct values (and those it must leave to the scan:
    // `IS NULL`, `coalesce`, which keep NULLs).
    let text = prop::sample::select(
        &[
            "args LIKE '%.pcap%'",
            "args NOT LIKE '-%'",
            "args ~ '^-[sc]'",
            "args = ''",
            "args IS NULL",
            "args IS NOT NULL",
            "coalesce(args, '') = ''",
            "exe LIKE '%bin/%'",
            "lower(exe) = '/usr/bin/curl'",
            "pod ILIKE 'B%'",
            "starts_with(namespace, 'kube')",
            "dst_ip LIKE '10.%'",
            "kind NOT IN ('process_exec', 'k8s_audit')",
        ][..],
    )
    .prop_map(str::to_string);
    let leaf = prop_oneof![ns, pod, pods, bin, ip, src, time, text];
    leaf.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} AND {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} OR {b})")),
            inner.prop_map(|a| format!("NOT ({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever the data and the predicate, the indexed scan answers exactly what a full scan
    /// answers.
    #[test]
    fn indexed_results_equal_full_scan_results(
        rows in prop::collection::vec(arb_event(), 1..600),
        flush_points in prop::collection::vec(0usize..600, 0..3),
        predicates in prop::collection::vec(arb_predicate(), 1..6),
        groupings in prop::collection::vec(prop::sample::select(GROUPINGS), 6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = Store::open(dir.path(), options()).unwrap();
            let events: Vec<Event> = rows.iter().enumerate().map(|(i, &(t, ns, pod, exe, ip, args))| Event {
                ts: T0 + i64::from(t) * 1_000_000_000,
                kind: if ip.is_some() { "network_connect" } else { "process_exec" }.into(),
                source: "prop".into(),
                event_id: Some(i as i64),
                namespace: Some(NAMESPACES[ns].into()),
                pod: Some(PODS[pod].into()),
                exe: Some(EXES[exe].into()),
                dst_ip: ip.map(|i| IPS[i].into()),
                src_ip: ip.map(|i| IPS[(i + t as usize) % IPS.len()].into()),
                args: args.map(|a| match ARGS[a] {
                    "unique" => format!("unique {i}"),
                    a => a.to_string(),
                }),
                ..Default::default()
            }).collect();
            let mut cuts: Vec<usize> = flush_points.iter().map(|p| p % events.len()).collect();
            cuts.sort();
            cuts.push(events.len());
            let mut start = 0;
            for (k, &cut) in cuts.iter().enumerate() {
                if cut > start {
                    store.append(batch_of(&events[start..cut])).unwrap();
                    // Leave the last chunk in the memtable.
                    if k + 1 < cuts.len() {
                        store.flush().unwrap();
                    }
                    start = cut;
                }
            }
            let indexed = session(&store, IndexUse::On).await.unwrap();
            let full = session(&store, IndexUse::Off).await.unwrap();
            for p in &predicates {
                let sql = format!("SELECT event_id FROM events WHERE {p} ORDER BY event_id");
                let (a, _) = run(&indexed, &sql).await;
                let (b, _) = run(&full, &sql).await;
                prop_assert_eq!(text(&a), text(&b), "predicate {}", p);
            }
            // Grouped counts, which the indexes may answer without a scan.
            let filters = predicates.iter().map(|p| format!("WHERE {p}"));
            for (filter, groups) in filters.chain([String::new()]).zip(&groupings) {
                let sql = format!(
                    "SELECT {groups}, count(*) AS n FROM events {filter} \
                     GROUP BY {groups} ORDER BY {groups}"
                );
                let (a, _) = run(&indexed, &sql).await;
                let (b, _) = run(&full, &sql).await;
                prop_assert_eq!(text(&a), text(&b), "{}", sql);
                let sql = format!("SELECT count(*) AS n FROM events {filter}");
                let (a, _) = run(&indexed, &sql).await;
                let (b, _) = run(&full, &sql).await;
                prop_assert_eq!(text(&a), text(&b), "{}", sql);
            }
            Ok(())
        })?;
    }
}

/// A scan leaves each segment it opened in the table's cache with its page index, so the next
/// query decodes neither the footer nor the page index again.
#[tokio::test]
async fn scans_cache_each_segments_footer_with_its_page_index() {
    use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let table = Arc::new(EventsTable::new(store.clone(), IndexUse::On));
    let ctx = SessionContext::new();
    ctx.register_table("events", table.clone()).unwrap();
    let (batches, _) = run(
        &ctx,
        "SELECT count(*) AS n FROM events WHERE dst_ip = '10.1.0.0' AND ts > 0::timestamp",
    )
    .await;
    // j % 36 == 0 for 500 events in each of the 4 hours.
    assert_eq!(text(&batches).lines().nth(3).unwrap().trim(), "| 56 |");
    let segments = store.snapshot().segments;
    assert_eq!(segments.len(), 4);
    for segment in segments {
        let key = object_store::path::Path::from(segment.path.to_string_lossy().as_ref());
        let entry = table
            .metadata_cache()
            .get(&key)
            .unwrap_or_else(|| panic!("{} not cached", segment.path.display()));
        let parquet = entry
            .file_metadata
            .as_any()
            .downcast_ref::<CachedParquetMetaData>()
            .unwrap()
            .parquet_metadata();
        assert!(
            parquet.column_index().is_some() && parquet.offset_index().is_some(),
            "{}: cached without its page index",
            segment.path.display()
        );
    }
}

/// A session's process tree is followed to any depth and any time: a shell's grandchild and
/// its great-grandchild started hours later (another segment) still belong to the session,
/// and a process of the pod outside the tree does not.
#[tokio::test]
async fn exec_sessions_follow_the_process_tree_to_any_depth_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), options()).unwrap();
    let hour: i64 = 3_600_000_000_000;
    let pod = |e: Event| Event {
        namespace: Some("billing".into()),
        pod: Some("api-1".into()),
        source: "test".into(),
        ..e
    };
    let process = |i: i64, ts: i64, exe: &str, args: &str, id: &str, parent: &str, parent_exe| {
        pod(Event {
            ts,
            kind: "process_exec".into(),
            event_id: Some(i),
            exe: Some(exe.into()),
            args: Some(args.into()),
            exec_id: Some(id.into()),
            parent_exec_id: Some(parent.into()),
            parent_exe: Some(parent_exe),
            ..Default::default()
        })
    };
    let request = pod(Event {
        ts: T0,
        kind: "k8s_audit".into(),
        event_id: Some(1),
        verb: Some("create".into()),
        resource: Some("pods".into()),
        subresource: Some("exec".into()),
        audit_id: Some("req-1".into()),
        k8s_user: Some("mallory".into()),
        exe: Some("sh".into()),
        ..Default::default()
    });
    let first_hour = vec![
        request,
        process(
            2,
            T0 + 1_000_000,
            "/bin/sh",
            "",
            "sh",
            "shim",
            "/usr/bin/runc".into(),
        ),
        process(
            3,
            T0 + 5_000_000_000,
            "/bin/bash",
            "",
            "bash",
            "sh",
            "/bin/sh".into(),
        ),
        process(
            4,
            T0 + 6_000_000_000,
            "/usr/bin/app",
            "--serve",
            "app",
            "init",
            "/init".into(),
        ),
    ];
    let later = vec![
        process(
            5,
            T0 + 2 * hour,
            "/usr/bin/python3",
            "x.py",
            "py",
            "bash",
            "/bin/bash".into(),
        ),
        process(
            6,
            T0 + 3 * hour,
            "/usr/bin/curl",
            "-s https://203.0.113.50",
            "curl",
            "py",
            "/usr/bin/python3".into(),
        ),
        pod(Event {
            ts: T0 + 3 * hour + 1_000_000,
            kind: "network_connect".into(),
            event_id: Some(7),
            exec_id: Some("curl".into()),
            dst_ip: Some("203.0.113.50".into()),
            dst_port: Some(443),
            ..Default::default()
        }),
    ];
    for events in [first_hour, later] {
        store.append(batch_of(&events)).unwrap();
        store.flush().unwrap();
    }
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let (batches, _) = run(
        &ctx,
        "SELECT k8s_user, process_count, processes, connections FROM exec_sessions \
         WHERE session_id = 'req-1'",
    )
    .await;
    assert_eq!(
        text(&batches),
        "+----------+---------------+------------------------------------------------------------------------------------+--------------------+\n\
         | k8s_user | process_count | processes                                                                          | connections        |\n\
         +----------+---------------+------------------------------------------------------------------------------------+--------------------+\n\
         | mallory  | 4             | [/bin/sh, /bin/bash, /usr/bin/python3 x.py, /usr/bin/curl -s https://203.0.113.50] | [203.0.113.50:443] |\n\
         +----------+---------------+------------------------------------------------------------------------------------+--------------------+"
    );
}

/// The derived tables, each as kept (`DerivedTable`) and as its view's SQL planned whole.
async fn derived_as_kept_and_whole(ctx: &SessionContext) -> Vec<(String, String)> {
    let order = [
        ("containers", "container_id"),
        ("pods", "namespace, pod"),
        ("pod_ips", "ip, first_seen, namespace, pod"),
    ];
    let mut out = Vec::new();
    for (name, order) in order {
        let (_, sql) = views::CORRELATION_VIEWS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        let whole = format!("{name}_whole");
        if !ctx.table_exist(whole.as_str()).unwrap() {
            ctx.register_table(whole.as_str(), ctx.sql(sql).await.unwrap().into_view())
                .unwrap();
        }
        let kept = run(ctx, &format!("SELECT * FROM {name} ORDER BY {order}"))
            .await
            .0;
        let whole = run(ctx, &format!("SELECT * FROM {whole} ORDER BY {order}"))
            .await
            .0;
        assert!(
            kept.iter().any(|b| b.num_rows() > 0),
            "{name}: no rows; whole: {}",
            text(&whole)
        );
        out.push((text(&kept), text(&whole)));
    }
    out
}

/// A connection from `pod` at `ip` in `hour` (pods with addresses make `pod_ips` rows). Event
/// ids of its own: the store keeps one event per id.
fn lease(hour: i64, pod: &str, ip: &str) -> Event {
    Event {
        kind: "network_connect".into(),
        src_ip: Some(ip.into()),
        event_id: Some(1_000_000 + hour),
        dst_ip: Some("203.0.113.9".into()),
        ..event((hour * 3600) as u64, "billing", pod, "/usr/bin/curl", None)
    }
}

fn partials_computed(ctx: &SessionContext, name: &str) -> usize {
    let table = futures::executor::block_on(ctx.table_provider(name)).unwrap();
    let derived = (table.as_ref() as &dyn std::any::Any)
        .downcast_ref::<derived::DerivedTable>()
        .unwrap();
    derived.partials().computed()
}

#[tokio::test]
async fn derived_tables_merge_kept_segment_partials_with_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let check = |pairs: Vec<(String, String)>| {
        for (kept, whole) in pairs {
            assert_eq!(kept, whole);
        }
    };
    // An inventory row of a pod too: `pods` reads those (and their `raw`) in a branch of its
    // own, which the plan only has when some segment holds one.
    let inventory = Event {
        kind: "k8s_object".into(),
        resource: Some("pods".into()),
        event_id: Some(3_000_000),
        raw: Some(r#"{"metadata":{"creationTimestamp":"2027-01-15T07:00:00Z"}}"#.into()),
        ..event(2 * 3600 + 1, "billing", "billing-api-2", "", None)
    };
    store
        .append(batch_of(&[
            lease(1, "billing-api-1", "10.9.0.1"),
            lease(2, "billing-api-2", "10.9.0.2"),
            inventory,
        ]))
        .unwrap();
    store.flush().unwrap();
    check(derived_as_kept_and_whole(&ctx).await);
    let tables = ["containers", "pods", "pod_ips"];
    let first = tables.map(|t| partials_computed(&ctx, t));
    assert!(
        first.iter().all(|&n| n >= 5),
        "a partial per segment: {first:?}"
    );

    // New rows in the memtable: the segments' partials are reused, none is computed again.
    store
        .append(batch_of(&[
            lease(7, "billing-new-0", "10.9.0.1"),
            Event {
                container_id: Some("billing-new-0-second-container".into()),
                event_id: Some(2_000_000),
                ..event(7 * 3600 + 5, "billing", "billing-new-0", "/bin/sh", None)
            },
        ]))
        .unwrap();
    let pairs = derived_as_kept_and_whole(&ctx).await;
    assert!(pairs[0].0.contains("billing-new-0-second-container"));
    assert!(pairs[2].0.contains("billing-new-0"), "{}", pairs[2].0);
    check(pairs);
    assert_eq!(tables.map(|t| partials_computed(&ctx, t)), first);

    // Flushed then compacted: new segments get their partials, the old ones are let go.
    store.flush().unwrap();
    store
        .append(batch_of(&[lease(8, "billing-api-1", "10.9.0.3")]))
        .unwrap();
    check(derived_as_kept_and_whole(&ctx).await);
    assert_eq!(partials_computed(&ctx, "containers"), first[0] + 1);
    store.flush().unwrap();
    store.compact_major().unwrap();
    store
        .append(batch_of(&[lease(9, "billing-api-2", "10.9.0.4")]))
        .unwrap();
    check(derived_as_kept_and_whole(&ctx).await);
}

#[tokio::test]
async fn derived_partials_are_kept_with_their_segments_across_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    store
        .append(batch_of(&[lease(1, "billing-api-1", "10.9.0.1")]))
        .unwrap();
    store.flush().unwrap();
    let ctx = session(&store, IndexUse::On).await.unwrap();
    prepare_derived(&ctx).await.unwrap();
    let computed = partials_computed(&ctx, "pods");
    assert!(computed >= 4, "{computed}");

    // A new session (a restarted server) reads the segments' states instead of computing them.
    let again = session(&store, IndexUse::On).await.unwrap();
    for (kept, whole) in derived_as_kept_and_whole(&again).await {
        assert_eq!(kept, whole);
    }
    assert_eq!(partials_computed(&again, "pods"), 0);
    assert_eq!(partials_computed(&again, "containers"), 0);

    // A damaged state file is computed again (and replaced), with the same answer.
    let segment = store.snapshot().segments[0].clone();
    let files: Vec<_> = std::fs::read_dir(&segment.cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        std::fs::write(f, b"ARROW1 torn").unwrap();
    }
    let third = session(&store, IndexUse::On).await.unwrap();
    for (kept, whole) in derived_as_kept_and_whole(&third).await {
        assert_eq!(kept, whole);
    }
    let recomputed: usize = ["containers", "pods", "pod_ips"]
        .map(|t| partials_computed(&third, t))
        .iter()
        .sum();
    assert_eq!(recomputed, files.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_compute_each_segment_partial_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let sql = "SELECT * FROM containers ORDER BY container_id";
    let (a, b) = tokio::join!(run(&ctx, sql), run(&ctx, sql));
    assert_eq!(text(&a.0), text(&b.0));
    assert_eq!(
        partials_computed(&ctx, "containers"),
        store.snapshot().segments.len()
    );
}

/// A large `ORDER BY .. LIMIT` is a sort that can spill, not a top-k (which cannot, and ran
/// out of memory on wide rows), and answers the same; a small one stays a top-k.
#[tokio::test]
async fn a_large_top_k_is_a_sort_that_can_spill() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampNanosecondType;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), options()).unwrap();
    let n = large_topk::MAX_TOPK_ROWS as u64 + 20_000;
    for part in 0..4u64 {
        let events: Vec<Event> = (part * n / 4..(part + 1) * n / 4)
            .map(|i| Event {
                // Out of time order (7919 is prime to n), so the sort has work to do.
                ts: T0 + ((i * 7919) % n) as i64,
                raw: Some(format!("{i:0>40}")),
                ..event(i, "billing", "api-1", "/bin/sh", None)
            })
            .collect();
        store.append(batch_of(&events)).unwrap();
        store.flush().unwrap();
    }
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let fetch = large_topk::MAX_TOPK_ROWS + 10_000;
    let sql = format!("SELECT ts, raw FROM events ORDER BY ts DESC LIMIT {fetch}");
    let plan = plan_text(&ctx, &sql).await;
    assert!(!plan.contains("TopK"), "{plan}");
    assert!(plan.contains(&format!("fetch={fetch}")), "{plan}");
    let limited = limits::limited_context(&ctx, &limits::QueryLimits::default()).unwrap();
    let batches = limited.sql(&sql).await.unwrap().collect().await.unwrap();
    let ts: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec()
        })
        .collect();
    let expected: Vec<i64> = (0..fetch as i64).map(|k| T0 + n as i64 - 1 - k).collect();
    assert_eq!(ts, expected);

    let plan = plan_text(&ctx, "SELECT ts FROM events ORDER BY ts DESC LIMIT 10").await;
    assert!(plan.contains("TopK(fetch=10)"), "{plan}");
}

/// SQL `COPY … TO '….csv'` writes a list column as its JSON text (DataFusion's CSV sink
/// refused list columns), and the file reads back as CSV through the same session.
#[tokio::test]
async fn copy_to_csv_writes_lists_as_json_text() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), options()).unwrap();
    let events = [
        Event {
            k8s_groups: Some(vec!["developers".into(), "a \"quoted\", name".into()]),
            ..event(1, "billing", "api-1", "/bin/sh", None)
        },
        event(2, "billing", "api-1", "/bin/sh", None),
    ];
    store.append(batch_of(&events)).unwrap();
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let path = dir.path().join("groups.csv");
    let copied = ctx
        .sql(&format!(
            "COPY (SELECT event_id, k8s_groups FROM events ORDER BY event_id) TO '{}'",
            path.display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(text(&copied).contains("| 2     |"), "{}", text(&copied));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "event_id,k8s_groups\n1,\"[\"\"developers\"\",\"\"a \\\"\"quoted\\\"\", name\"\"]\"\n2,\n"
    );
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE copied STORED AS CSV LOCATION '{}'",
        path.display()
    ))
    .await
    .unwrap();
    let (batches, _) = run(
        &ctx,
        "SELECT event_id, k8s_groups FROM copied ORDER BY event_id",
    )
    .await;
    assert_eq!(
        text(&batches),
        "+----------+-------------------------------------+\n\
         | event_id | k8s_groups                          |\n\
         +----------+-------------------------------------+\n\
         | 1        | [\"developers\",\"a \\\"quoted\\\", name\"] |\n\
         | 2        |                                     |\n\
         +----------+-------------------------------------+"
    );
}

#[tokio::test]
async fn a_query_needing_a_damaged_segment_fails_naming_it_unless_allowed_to_skip_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = fixture(dir.path());
    let victim = store.manifest().segments[1].clone();
    let path = dir.path().join(&victim.path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let count = |sql: &'static str| {
        let ctx = ctx.clone();
        async move { ctx.sql(sql).await?.collect().await }
    };

    let err = count("SELECT count(*) FROM events")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("segment {} (500 events", victim.id)),
        "{err}"
    );
    assert!(
        err.contains("SHA-256") && err.contains("--allow-damaged"),
        "{err}"
    );
    // Grouped counts come from the indexes: the damaged index is not trusted either.
    let err = count("SELECT kind, count(*) FROM events GROUP BY kind")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is damaged"), "{err}");
    // A query the damaged hour cannot answer does not need it.
    let hour_0 = format!(
        "SELECT count(*) AS n FROM events WHERE ts < to_timestamp_nanos({})",
        T0 + 3_600_000_000_000
    );
    let (batches, _) = run(&ctx, &hour_0).await;
    assert!(text(&batches).contains("| 500 |"), "{}", text(&batches));

    ctx.sql(&format!("SET {ALLOW_DAMAGED} = true"))
        .await
        .unwrap();
    let (batches, _) = run(&ctx, "SELECT count(*) AS n FROM events").await;
    // Four hours of 500 and the memtable's 50, less the damaged hour.
    assert!(text(&batches).contains("| 1550 |"), "{}", text(&batches));
    let (batches, stats) = run(&ctx, "SELECT ts FROM events").await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1550);
    let stats = stats.unwrap();
    assert_eq!(
        (stats.damaged_segments_skipped, stats.damaged_rows_skipped),
        (1, 500)
    );
    let (batches, _) = run(
        &ctx,
        "SELECT count(*) AS n FROM events WHERE kind = 'process_exec'",
    )
    .await;
    let (all, _) = run(&ctx, "SELECT count(*) AS n FROM (SELECT kind FROM events WHERE kind = 'process_exec' ORDER BY ts)").await;
    assert_eq!(
        text(&batches),
        text(&all),
        "index counts and scans skip the same segment"
    );
    let (plan, _) = run(&ctx, "EXPLAIN SELECT * FROM events").await;
    assert!(
        text(&plan).contains("damaged_skipped=1 (500 rows)"),
        "{}",
        text(&plan)
    );

    // Recorded by the store: a new process does not read it again, and still says so.
    store.compact_major().unwrap();
    assert_eq!(store.damaged().len(), 1);
    let ctx = session(&store, IndexUse::On).await.unwrap();
    let err = ctx
        .sql("SELECT count(*) FROM events")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in quarantine/"), "{err}");
}
