//! ktrail's SQL functions: `cidr_contains(cidr, ip)` and `is_private_ip(ip)`.
//!
//! Both take any string type and return NULL for NULL input; a malformed CIDR or IP is not an
//! error (events carry what producers wrote) but simply matches nothing: `false`.

use std::net::IpAddr;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use ipnet::IpNet;

/// The functions to register on a session; `known_networks` is the allow-list (`cidr`, `label`)
/// behind `known_network(ip)`.
pub fn udfs(known_networks: &[(String, String)]) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(CidrContains::new()),
        ScalarUDF::new_from_impl(IsPrivateIp::new()),
        ScalarUDF::new_from_impl(KnownNetwork::new(known_networks)),
    ]
}

/// Whether `ip` is private (RFC 1918, RFC 6598 shared space, loopback, link-local, IPv6 unique
/// local / link-local / loopback, and IPv4-mapped forms of those).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let s = v6.segments()[0];
                v6.is_loopback() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
            }
        },
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    // Tolerate an IPv6 zone (`fe80::1%eth0`).
    s.split('%').next()?.parse().ok()
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| parse_ip(s).map(IpNet::from))
}

fn strings(arg: &ColumnarValue, rows: usize) -> Result<StringArray> {
    let array = arg.to_array(rows)?;
    let array = cast(&array, &DataType::Utf8)?;
    Ok(array
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8")
        .clone())
}

fn string_signature(arity: usize) -> Signature {
    let types = [DataType::Utf8, DataType::Utf8View, DataType::LargeUtf8];
    let sigs = types
        .iter()
        .map(|t| TypeSignature::Exact(vec![t.clone(); arity]))
        .chain(std::iter::once(TypeSignature::String(arity)))
        .collect();
    Signature::one_of(sigs, Volatility::Immutable)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CidrContains {
    signature: Signature,
}

impl CidrContains {
    fn new() -> Self {
        Self {
            signature: string_signature(2),
        }
    }
}

impl ScalarUDFImpl for CidrContains {
    fn name(&self) -> &str {
        "cidr_contains"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.len() != 2 {
            return plan_err!("cidr_contains(cidr, ip) takes 2 arguments");
        }
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        // A literal CIDR (the common case) is parsed once.
        if let ColumnarValue::Scalar(cidr) = &args.args[0] {
            let net = scalar_str(cidr).map(|s| parse_net(&s));
            let ips = strings(&args.args[1], rows)?;
            let out: BooleanArray = ips
                .iter()
                .map(|ip| match (&net, ip) {
                    (Some(net), Some(ip)) => Some(
                        net.as_ref()
                            .zip(parse_ip(ip))
                            .is_some_and(|(n, a)| n.contains(&a)),
                    ),
                    _ => None,
                })
                .collect();
            return Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef));
        }
        let cidrs = strings(&args.args[0], rows)?;
        let ips = strings(&args.args[1], rows)?;
        let out: BooleanArray = cidrs
            .iter()
            .zip(ips.iter())
            .map(|(c, ip)| {
                Some(
                    parse_net(c?)
                        .zip(parse_ip(ip?))
                        .is_some_and(|(n, a)| n.contains(&a)),
                )
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

fn scalar_str(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => s.clone(),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IsPrivateIp {
    signature: Signature,
}

impl IsPrivateIp {
    fn new() -> Self {
        Self {
            signature: string_signature(1),
        }
    }
}

impl ScalarUDFImpl for IsPrivateIp {
    fn name(&self) -> &str {
        "is_private_ip"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ips = strings(&args.args[0], args.number_rows)?;
        let out: BooleanArray = ips
            .iter()
            .map(|ip| ip.map(|ip| parse_ip(ip).is_some_and(is_private)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `known_network(ip)`: the label of the most specific allow-listed network containing `ip`,
/// else NULL. Built per session from the allow-list it was opened with, so `egress` can
/// classify with a lookup instead of a join.
#[derive(Debug)]
struct KnownNetwork {
    signature: Signature,
    /// Longest prefix first.
    nets: Vec<(IpNet, String)>,
}

impl KnownNetwork {
    fn new(list: &[(String, String)]) -> Self {
        let mut nets: Vec<(IpNet, String)> = list
            .iter()
            .filter_map(|(cidr, label)| Some((parse_net(cidr)?, label.clone())))
            .collect();
        nets.sort_by_key(|n| std::cmp::Reverse(n.0.prefix_len()));
        Self {
            signature: string_signature(1),
            nets,
        }
    }
}

impl PartialEq for KnownNetwork {
    fn eq(&self, other: &Self) -> bool {
        self.nets == other.nets
    }
}
impl Eq for KnownNetwork {}
impl std::hash::Hash for KnownNetwork {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.nets.hash(state);
    }
}

impl ScalarUDFImpl for KnownNetwork {
    fn name(&self) -> &str {
        "known_network"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ips = strings(&args.args[0], args.number_rows)?;
        let out: StringArray = ips
            .iter()
            .map(|ip| {
                let ip = parse_ip(ip?)?;
                self.nets
                    .iter()
                    .find(|(n, _)| n.contains(&ip))
                    .map(|(_, l)| l.as_str())
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
