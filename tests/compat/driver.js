// Drives the official SDKs from the Python tests: one JSON command per stdin line, one JSON
// line per reply or observed event on stdout. pusher-js clients sign their channels and users
// with the official `pusher` server SDK (authorizeChannel / authenticateUser), as an app's
// auth endpoint would. A `connect` or `rest` command with `tls: true` uses wss:// / https://
// (pusher-js `forceTLS`, npm `pusher` `useTLS`); the node process must trust the server's
// certificate (NODE_EXTRA_CA_CERTS).
'use strict';
const readline = require('readline');
const PusherJS = require('pusher-js');
const PusherServer = require('pusher');

const port = process.argv[2];
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const clients = {};
const servers = {};

function serverSdk(app, tls = false) {
  const k = JSON.stringify([app, Boolean(tls)]);
  if (!servers[k]) {
    servers[k] = new PusherServer({
      appId: app.id, key: app.key, secret: app.secret, host: '127.0.0.1', port: String(port),
      useTLS: Boolean(tls), encryptionMasterKeyBase64: app.masterKey,
    });
  }
  return servers[k];
}

function connect(c) {
  const sdk = serverSdk(c.app, c.tls);
  const p = new PusherJS(c.app.key, {
    wsHost: '127.0.0.1', wsPort: Number(c.port || port), forceTLS: Boolean(c.tls),
    ...(c.tls ? { wssPort: Number(c.port || port) } : {}), enabledTransports: ['ws'],
    disableStats: true, cluster: 'local', activityTimeout: c.activityTimeout || 120000,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        if (c.badAuth) return cb(null, { auth: c.app.key + ':' + '0'.repeat(64) });
        const presence = channelName.startsWith('presence-') ? c.presence : undefined;
        cb(null, sdk.authorizeChannel(socketId, channelName, presence));
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, cb) => cb(null, sdk.authenticateUser(socketId, c.user)),
    },
  });
  clients[c.name] = p;
  p.connection.bind('state_change', (s) => out({ type: 'state', client: c.name, state: s.current }));
  p.connection.bind('error', (e) => out({ type: 'error', client: c.name, error: e }));
  p.user.bind_global((event, data) => out({ type: 'user_event', client: c.name, event, data }));
}

function subscribe(c) {
  const ch = clients[c.name].subscribe(c.channel);
  ch.bind_global((event, data) => {
    const o = { type: 'event', client: c.name, channel: c.channel, event, data };
    if (event === 'pusher:subscription_succeeded' && ch.members) {
      o.members = Object.keys(ch.members.members).sort();
      o.me = ch.members.me;
    }
    if (event === 'pusher:member_added' || event === 'pusher:member_removed') {
      o.members = Object.keys(ch.members.members).sort();
    }
    out(o);
  });
}

async function rest(c) {
  const sdk = serverSdk(c.app, c.tls);
  try {
    let res;
    const a = c.args;
    switch (c.method) {
      case 'trigger': res = await sdk.trigger(a.channels, a.event, a.data, a.params || {}); break;
      case 'triggerBatch': res = await sdk.triggerBatch(a.batch); break;
      case 'get': res = await sdk.get({ path: a.path, params: a.params || {} }); break;
      case 'sendToUser': res = await sdk.sendToUser(a.userId, a.event, a.data); break;
      case 'terminateUserConnections': res = await sdk.terminateUserConnections(a.userId); break;
      default: throw new Error('unknown rest method ' + c.method);
    }
    return { status: res.status, body: await res.json() };
  } catch (e) {
    if (e.status !== undefined) return { status: e.status, body: e.body };
    return { status: null, body: String(e) };
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const c = JSON.parse(line);
  try {
    let result = null;
    switch (c.cmd) {
      case 'connect': connect(c); break;
      case 'subscribe': subscribe(c); break;
      case 'unsubscribe': clients[c.name].unsubscribe(c.channel); break;
      case 'trigger': result = clients[c.name].channel(c.channel).trigger(c.event, c.data); break;
      case 'signin': clients[c.name].signin(); break;
      case 'socket_id': result = clients[c.name].connection.socket_id; break;
      case 'disconnect': clients[c.name].disconnect(); break;
      case 'members': {
        const m = clients[c.name].channel(c.channel).members;
        result = { count: m.count, ids: Object.keys(m.members).sort(), me: m.me };
        break;
      }
      case 'rest': result = await rest(c); break;
      default: throw new Error('unknown command ' + c.cmd);
    }
    out({ type: 'reply', id: c.id, result });
  } catch (e) {
    out({ type: 'reply', id: c.id, error: String(e && e.stack || e) });
  }
});
rl.on('close', () => process.exit(0));
