/* Pushwire browser client: a small Pusher-protocol client with no dependencies.
 *
 *   const pw = new Pushwire({ url: "ws://127.0.0.1:6001", key: "app-key",
 *                             authEndpoint: "/pusher/auth" });
 *   const room = pw.subscribe("presence-room");
 *   room.bind("pusher:subscription_succeeded", (members) => console.log(members.count));
 *   room.bind("message", (data) => console.log(data));
 *   room.trigger("client-typing", { on: true });
 *
 * Reconnects by Pusher's close-code ranges (4000-4099: never; 4100-4199: after a backoff;
 * 4200-4299: at once; anything else: capped exponential backoff) and subscribes again.
 *
 * Recovery (Pushwire's channel history; option `recover`, default true): each channel
 * remembers the last position (`epoch`, `offset`) it saw and asks for what it missed when it
 * subscribes again (after a server restart or a network loss). The missed events arrive
 * first, in order, each once (an event seen already is never delivered twice); positioned
 * events carry `offset` and `epoch` in the handler's metadata. After
 * `pusher:subscription_succeeded` the channel emits `pushwire:recovered`, or
 * `pushwire:recovery_failed` (history gone or too far behind: fetch your state again), with
 * data `{ epoch, offset }`:
 *
 *   room.bind("pushwire:recovery_failed", () => reloadState());
 *   room.bind("message", (data, meta) => console.log(meta.offset, data));
 *
 * Servers without history (any Pusher server) ignore the request.
 */
(function (global) {
  "use strict";

  function Emitter() { this._h = {}; this._g = []; }
  Emitter.prototype.bind = function (event, cb) {
    (this._h[event] = this._h[event] || []).push(cb); return this;
  };
  Emitter.prototype.unbind = function (event, cb) {
    if (!cb) { delete this._h[event]; return this; }
    this._h[event] = (this._h[event] || []).filter(function (f) { return f !== cb; });
    return this;
  };
  Emitter.prototype.bind_global = function (cb) { this._g.push(cb); return this; };
  Emitter.prototype.emit = function (event, data, meta) {
    (this._h[event] || []).slice().forEach(function (cb) { cb(data, meta || {}); });
    this._g.slice().forEach(function (cb) { cb(event, data); });
  };

  function Members() { this.members = {}; this.count = 0; this.me = null; }
  Members.prototype.each = function (cb) {
    var m = this.members;
    Object.keys(m).forEach(function (id) { cb({ id: id, info: m[id] }); });
  };
  Members.prototype.get = function (id) {
    return id in this.members ? { id: id, info: this.members[id] } : null;
  };
  Members.prototype._set = function (hash) {
    this.members = hash || {}; this.count = Object.keys(this.members).length;
  };

  function Channel(client, name) {
    Emitter.call(this);
    this.client = client; this.name = name; this.subscribed = false;
    this.members = new Members();
    this.position = null;  // { epoch, offset } of the last event seen (history recovery)
    this._refilling = false;  // subscribing again to get events a gap showed were lost
  }
  Channel.prototype = Object.create(Emitter.prototype);
  // Takes the position of a positioned frame: "new"; "seen" for one seen already (never
  // delivered twice); "gap" when events before it never came (not taken: the channel
  // subscribes again from its last position and the server sends them, in order).
  Channel.prototype._take = function (msg) {
    var epoch = msg.epoch, offset = msg.offset, pos = this.position;
    if (typeof epoch !== "string" || typeof offset !== "number") return "new";
    if (pos && pos.epoch === epoch) {
      if (offset <= pos.offset) return "seen";
      if (offset > pos.offset + 1) return "gap";
    }
    this.position = { epoch: epoch, offset: offset };
    return "new";
  };
  Channel.prototype.trigger = function (event, data) {
    if (event.indexOf("client-") !== 0) {
      throw new Error("Client events must start with 'client-': " + event);
    }
    return this.client._send({ event: event, channel: this.name, data: data });
  };

  function Pushwire(opts) {
    Emitter.call(this);
    if (!opts || !opts.key) throw new Error("Pushwire needs { key }");
    this.opts = opts;
    var base = opts.url || ((location.protocol === "https:" ? "wss://" : "ws://") + location.host);
    this.url = base.replace(/\/$/, "") + "/app/" + encodeURIComponent(opts.key) +
      "?protocol=7&client=pushwire-js&version=0.1.0";
    this.channels = {};
    this.socket_id = null;
    this.state = "initialized";
    this.user = null;
    this._backoff = 1000;
    this._closing = false;
    this.connect();
  }
  Pushwire.prototype = Object.create(Emitter.prototype);

  Pushwire.prototype._setState = function (s) {
    var prev = this.state; this.state = s;
    this.emit("state_change", { previous: prev, current: s });
    this.emit(s);
  };

  Pushwire.prototype.connect = function () {
    var self = this;
    self._closing = false;
    self._setState("connecting");
    var ws = self.ws = new WebSocket(self.url);
    ws.onmessage = function (e) { self._onMessage(e.data); };
    ws.onclose = function (e) {
      self.socket_id = null;
      clearTimeout(self._activity);
      Object.keys(self.channels).forEach(function (n) { self.channels[n].subscribed = false; });
      if (self._closing) { self._setState("disconnected"); return; }
      var code = e.code, delay;
      if (code >= 4000 && code < 4100) { self._setState("failed"); return; }
      if (code >= 4200 && code < 4300) { delay = 0; self._backoff = 1000; }
      else { delay = self._backoff; self._backoff = Math.min(self._backoff * 2, 30000); }
      self._setState("unavailable");
      setTimeout(function () { if (!self._closing) self.connect(); }, delay);
    };
  };

  Pushwire.prototype.disconnect = function () {
    this._closing = true; if (this.ws) this.ws.close();
  };

  Pushwire.prototype._send = function (obj) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(obj)); return true;
  };

  Pushwire.prototype._touch = function () {
    var self = this;
    clearTimeout(self._activity);
    self._activity = setTimeout(function () {
      self._send({ event: "pusher:ping", data: {} });
      self._activity = setTimeout(function () { if (self.ws) self.ws.close(4201); },
                                  self.opts.pongTimeout || 30000);
    }, self._activityTimeout || 120000);
  };

  Pushwire.prototype._onMessage = function (raw) {
    var msg = JSON.parse(raw), data = msg.data, self = this;
    if (typeof data === "string") { try { data = JSON.parse(data); } catch (e) { /* text */ } }
    self._touch();
    var ch = msg.channel ? self.channels[msg.channel] : null;
    switch (msg.event) {
      case "pusher:connection_established":
        self.socket_id = data.socket_id;
        self._activityTimeout = Math.min(self.opts.activityTimeout || 120000,
                                         data.activity_timeout * 1000);
        self._backoff = 1000;
        self._setState("connected");
        if (self._signedIn) self.signin();
        Object.keys(self.channels).forEach(function (n) { self._subscribe(self.channels[n]); });
        return;
      case "pusher:ping": self._send({ event: "pusher:pong", data: {} }); return;
      case "pusher:pong": return;
      case "pusher:error": self.emit("error", data); return;
      case "pusher:signin_success":
        self.user = JSON.parse(data.user_data);
        self._send({ event: "pusher:subscribe",
                     data: { channel: "#server-to-user-" + self.user.id } });
        self.emit("signin_success", self.user);
        return;
    }
    if (ch && (msg.event === "pushwire:position" ||  // an event left out for us: position only
               ("offset" in msg && msg.event.indexOf("pusher") !== 0))) {
      var taken = ch._take(msg);
      if (taken === "gap" && ch.subscribed && !ch._refilling) {
        ch._refilling = true;  // subscribe again from the last position: the server resends
        self._send({ event: "pusher:unsubscribe", data: { channel: ch.name } });
        self._subscribe(ch);
      }
      if (taken !== "new" || msg.event === "pushwire:position") return;
    }
    if (ch) {
      var meta = msg.user_id ? { user_id: msg.user_id } : {};
      if ("offset" in msg && msg.event.indexOf("pusher") !== 0) {
        meta.offset = msg.offset; meta.epoch = msg.epoch;
      }
      switch (msg.event) {
        case "pusher_internal:subscription_succeeded":
          ch.subscribed = true;
          ch._refilling = false;
          if (typeof msg.epoch === "string" && typeof msg.offset === "number") {
            ch.position = { epoch: msg.epoch, offset: msg.offset };
          } else if (msg.recovered === false) {
            ch.position = null;
          }
          if (data && data.presence) ch.members._set(data.presence.hash);
          ch.emit("pusher:subscription_succeeded", data && data.presence ? ch.members : data);
          if (typeof msg.recovered === "boolean") {
            ch.emit(msg.recovered ? "pushwire:recovered" : "pushwire:recovery_failed",
                    { epoch: msg.epoch, offset: msg.offset });
          }
          break;
        case "pusher_internal:member_added":
          ch.members.members[data.user_id] = data.user_info;
          ch.members._set(ch.members.members);
          ch.emit("pusher:member_added", { id: data.user_id, info: data.user_info });
          break;
        case "pusher_internal:member_removed":
          var info = ch.members.members[data.user_id];
          delete ch.members.members[data.user_id];
          ch.members._set(ch.members.members);
          ch.emit("pusher:member_removed", { id: data.user_id, info: info });
          break;
        case "pusher_internal:subscription_count":
          ch.emit("pusher:subscription_count", data); break;
        default:
          ch.emit(msg.event, data, meta);
      }
    }
    if (msg.event.indexOf("pusher_internal:") !== 0) self.emit(msg.event, data);
  };

  Pushwire.prototype._post = function (url, form, cb) {
    var body = Object.keys(form).map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(form[k]);
    }).join("&");
    fetch(url, { method: "POST", body: body, credentials: "same-origin",
                 headers: Object.assign({ "Content-Type": "application/x-www-form-urlencoded" },
                                        this.opts.authHeaders || {}) })
      .then(function (r) {
        if (!r.ok) throw new Error("auth endpoint answered " + r.status); return r.json();
      })
      .then(function (j) { cb(null, j); }, function (e) { cb(e); });
  };

  // The subscribe's `recover` (Pushwire's extension): {} the first time, then the position.
  Pushwire.prototype._recover = function (ch, data) {
    if (this.opts.recover === false || ch.name.charAt(0) === "#") return data;
    var pos = ch.position;
    data.recover = pos ? { epoch: pos.epoch, offset: pos.offset } : {};
    return data;
  };

  Pushwire.prototype._subscribe = function (ch) {
    var self = this;
    if (!self.socket_id) return;
    if (/^(private-|presence-)/.test(ch.name)) {
      if (!self.opts.authEndpoint) {
        ch.emit("pusher:subscription_error", { type: "AuthError", error: "no authEndpoint" });
        return;
      }
      self._post(self.opts.authEndpoint, { socket_id: self.socket_id, channel_name: ch.name },
        function (err, auth) {
          if (err) { ch.emit("pusher:subscription_error",
                             { type: "AuthError", error: String(err) }); return; }
          if (auth.channel_data) {
            var cd = JSON.parse(auth.channel_data);
            ch.members.me = { id: String(cd.user_id), info: cd.user_info };
          }
          self._send({ event: "pusher:subscribe", data: self._recover(ch, {
            channel: ch.name, auth: auth.auth, channel_data: auth.channel_data }) });
        });
    } else {
      self._send({ event: "pusher:subscribe", data: self._recover(ch, { channel: ch.name }) });
    }
  };

  Pushwire.prototype.subscribe = function (name) {
    var ch = this.channels[name];
    if (!ch) { ch = this.channels[name] = new Channel(this, name); this._subscribe(ch); }
    return ch;
  };
  Pushwire.prototype.channel = function (name) { return this.channels[name] || null; };
  Pushwire.prototype.unsubscribe = function (name) {
    if (this.channels[name]) {
      delete this.channels[name];
      this._send({ event: "pusher:unsubscribe", data: { channel: name } });
    }
  };
  Pushwire.prototype.unsubscribeAll = function () {
    Object.keys(this.channels).forEach(this.unsubscribe, this);
  };
  Pushwire.prototype.signin = function () {
    var self = this;
    self._signedIn = true;
    if (!self.opts.userAuthEndpoint || !self.socket_id) return;
    self._post(self.opts.userAuthEndpoint, { socket_id: self.socket_id }, function (err, auth) {
      if (err) { self.emit("error", { message: String(err) }); return; }
      self._send({ event: "pusher:signin", data: auth });
    });
  };

  // The original webman-push-server client's shape: new Push({url, app_key, auth}).
  function Push(o) {
    return new Pushwire({ url: o.url, key: o.app_key, authEndpoint: o.auth });
  }

  global.Pushwire = Pushwire;
  global.Push = global.Push || Push;
})(typeof window !== "undefined" ? window : this);
