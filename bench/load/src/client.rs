//! One MQTT 3.1.1 connection (rumqttc) driven inline: connect, subscribe and
//! requests poll the event loop in the caller's task; a long-lived reader
//! moves the event loop into its own task with [`Conn::spawn_reader`].

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

/// Where to connect and how to log in.
#[derive(Clone)]
pub struct Target {
    pub port: u16,
    /// More brokers of a cluster: connections go round-robin over `port`
    /// and these.
    pub more_ports: Vec<u16>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// HS256 key for `chatmq` (JWT as password); `None` = anonymous (Mosquitto).
    key: Option<jsonwebtoken::EncodingKey>,
}

impl Target {
    pub fn chatmq(port: u16, secret: &str) -> anyhow::Result<Self> {
        Ok(Target {
            port,
            more_ports: Vec::new(),
            next: Default::default(),
            key: Some(jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())?),
        })
    }

    pub fn anonymous(port: u16) -> Self {
        Target {
            port,
            more_ports: Vec::new(),
            next: Default::default(),
            key: None,
        }
    }

    /// The port of the next connection: round-robin over the brokers.
    pub fn next_port(&self) -> u16 {
        let n = self.more_ports.len() + 1;
        match self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n {
            0 => self.port,
            i => self.more_ports[i - 1],
        }
    }

    /// A JWT for `user`, valid for a day.
    pub fn token(&self, user: &str) -> Result<Option<String>> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 86_400;
        let claims = json!({"sub": user, "exp": exp});
        Ok(Some(jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            key,
        )?))
    }
}

/// Client-side knobs.
#[derive(Debug, Clone, Copy)]
pub struct ConnOpts {
    /// QoS 1 publishes awaiting PUBACK.
    pub inflight: u16,
    /// Requests queued between the handle and the event loop.
    pub channel: usize,
    /// Time to get a CONNACK.
    pub connect_timeout: Duration,
}

impl Default for ConnOpts {
    fn default() -> Self {
        ConnOpts {
            inflight: 100,
            channel: 64,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

static CORR: AtomicU64 = AtomicU64::new(1);

/// A connected client.
pub struct Conn {
    pub client: AsyncClient,
    el: EventLoop,
    pub user: String,
    pub id: String,
}

impl Conn {
    /// Connects (clean session) and waits for an accepting CONNACK.
    /// `token` is the password (JWT) if the target wants one.
    pub async fn connect(
        target: &Target,
        user: &str,
        token: Option<&str>,
        id: &str,
        o: ConnOpts,
    ) -> Result<Conn> {
        let mut opts = MqttOptions::new(id, "127.0.0.1", target.next_port());
        opts.set_keep_alive(Duration::from_secs(120))
            .set_clean_session(true)
            .set_max_packet_size(64 << 20, 64 << 20)
            .set_inflight(o.inflight);
        if let Some(t) = token {
            opts.set_credentials(user, t);
        }
        let (client, mut el) = AsyncClient::new(opts, o.channel);
        el.network_options
            .set_connection_timeout(o.connect_timeout.as_secs().max(1));
        el.network_options.set_tcp_nodelay(true);
        let mut c = Conn {
            client,
            el,
            user: user.into(),
            id: id.into(),
        };
        let deadline = Instant::now() + o.connect_timeout;
        loop {
            match c.poll(deadline, "CONNACK").await? {
                Packet::ConnAck(a) if a.code == ConnectReturnCode::Success => return Ok(c),
                Packet::ConnAck(a) => bail!("{id}: connect refused: {:?}", a.code),
                _ => {}
            }
        }
    }

    /// Connects as `user` with a freshly minted token.
    pub async fn login(target: &Target, user: &str, id: &str, o: ConnOpts) -> Result<Conn> {
        let token = target.token(user)?;
        Self::connect(target, user, token.as_deref(), id, o).await
    }

    async fn poll(&mut self, deadline: Instant, what: &str) -> Result<Packet> {
        loop {
            match timeout_at(deadline, self.el.poll()).await {
                Err(_) => bail!("{}: timed out waiting for {what}", self.id),
                Ok(Err(e)) => bail!("{}: connection error waiting for {what}: {e}", self.id),
                Ok(Ok(Event::Incoming(p))) => return Ok(p),
                Ok(Ok(Event::Outgoing(_))) => {}
            }
        }
    }

    /// Subscribes at QoS 1 and waits for a SUBACK granting every filter.
    pub async fn subscribe(&mut self, filters: &[String]) -> Result<()> {
        let many = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        self.client.subscribe_many(many).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Packet::SubAck(a) = self.poll(deadline, "SUBACK").await? {
                if a.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    bail!("{}: subscription to {filters:?} refused", self.id);
                }
                return Ok(());
            }
        }
    }

    /// This connection's reply topic on chatmq.
    pub fn reply_topic(&self) -> String {
        format!("chat/users/{}/replies/{}", self.user, self.id)
    }

    /// Sends a chatmq request (payload `reply`/`corr`) and returns the whole
    /// reply. The reply topic must be subscribed. Other publishes that arrive
    /// meanwhile are dropped.
    pub async fn request(&mut self, method: &str, params: Value, wait: Duration) -> Result<Value> {
        let topic = format!("chat/rpc/{}/{method}", self.user);
        self.request_on(&topic, params, wait).await
    }

    /// Publishes `params` plus `reply`/`corr` to `topic` (a request, or a
    /// send that wants its `{"seq"}` reply) and waits for the matching reply.
    pub async fn request_on(
        &mut self,
        topic: &str,
        params: Value,
        wait: Duration,
    ) -> Result<Value> {
        let corr = format!("c{}", CORR.fetch_add(1, Ordering::Relaxed));
        let mut req = match params {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let reply = self.reply_topic();
        req.insert("reply".into(), reply.clone().into());
        req.insert("corr".into(), corr.clone().into());
        self.client
            .publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&req)?)
            .await?;
        let deadline = Instant::now() + wait;
        loop {
            if let Packet::Publish(p) = self.poll(deadline, topic).await? {
                if p.topic == reply {
                    let v: Value = serde_json::from_slice(&p.payload)?;
                    if v["corr"] == corr.as_str() {
                        return Ok(v);
                    }
                }
            }
        }
    }

    /// Like [`Conn::request`], failing unless the reply is ok; returns `result`.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let r = self
            .request(method, params.clone(), Duration::from_secs(60))
            .await?;
        if r["ok"] != true {
            bail!("{method} {params} by {} failed: {r}", self.user);
        }
        Ok(r["result"].clone())
    }

    /// Moves the event loop into a task that hands every received publish
    /// (topic, payload) to `on_publish` until the connection fails or the
    /// task is aborted. Returns the handle to publish with and the task.
    pub fn spawn_reader<F>(self, mut on_publish: F) -> (AsyncClient, JoinHandle<Result<()>>)
    where
        F: FnMut(&str, &Bytes) + Send + 'static,
    {
        let Conn {
            client, mut el, id, ..
        } = self;
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.topic, &p.payload),
                    Ok(Event::Incoming(Packet::Disconnect)) => {
                        return Err(anyhow!("{id}: disconnected by the server"))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(anyhow!("{id}: {e}")),
                }
            }
        });
        (client, task)
    }
}
