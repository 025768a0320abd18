// Browser scenarios in Debian's Chromium (playwright-core): prints one JSON result line.
//   node scenarios.js chat <chatUrl> <screenshot.png>
//   node scenarios.js dashboard <subscriberNodeUrl> <dashboardNodeUrl> <appSecret> <screenshot.png>
//   node scenarios.js apps <serverUrl> <adminToken> <screenshot.png>
//   node scenarios.js drive <serverUrl>   (a page with /pushwire.js, driven over stdin/stdout)
'use strict';
const { chromium } = require('playwright-core');

const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function chat(url, shot) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  try {
    const alice = await browser.newPage();
    const bob = await browser.newPage();
    await alice.goto(url + '/?name=Alice');
    await bob.goto(url + '/?name=Bob');
    await alice.waitForFunction(() => document.getElementById('count').textContent === '2');
    await bob.waitForFunction(() => document.getElementById('count').textContent === '2');
    const members = await bob.$$eval('#members li', (lis) => lis.map((l) => l.textContent).sort());
    await alice.type('#text', 'hello bob', { delay: 20 });
    await bob.waitForFunction(() => document.getElementById('typing').textContent.includes('Alice'));
    const typing = await bob.textContent('#typing');
    await alice.click('#send button');
    await bob.waitForFunction(() => document.getElementById('messages').textContent.includes('hello bob'));
    await bob.fill('#text', 'hi alice');
    await bob.click('#send button');
    await alice.waitForFunction(() => document.getElementById('messages').textContent.includes('hi alice'));
    const aliceLog = await alice.textContent('#messages');
    await alice.close();  // Bob sees Alice leave
    await bob.waitForFunction(() => document.getElementById('count').textContent === '1');
    await bob.screenshot({ path: shot });
    return { members, typing, aliceLog, bobCountAfter: await bob.textContent('#count') };
  } finally {
    await browser.close();
  }
}

async function dashboard(base, dashBase, secret, shot) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  try {
    const sub = await browser.newPage();
    await sub.goto(base + '/dashboard');  // same origin; the page itself holds no data
    await sub.setContent('<html><body><script src="' + base + '/pushwire.js"></script></body></html>');
    await sub.evaluate((b) => {
      window.got = [];
      window.pw = new Pushwire({ url: b.replace(/^http/, 'ws'), key: 'app-key' });
      const ch = window.pw.subscribe('test-channel');
      ch.bind('pusher:subscription_succeeded', () => { window.subscribed = true; });
      ch.bind('test-event', (d) => window.got.push(d));
    }, base);
    await sub.waitForFunction(() => window.subscribed === true);
    const dash = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await dash.goto(dashBase + '/dashboard');
    await dash.fill('#app', 'app-id');
    await dash.fill('#token', secret);
    await dash.click('#login-form button');
    await dash.waitForFunction(() => Number(document.getElementById('connections').textContent) >= 1);
    await dash.waitForFunction(() => document.getElementById('channels').textContent.includes('test-channel'));
    await dash.click('#trigger button');
    await sub.waitForFunction(() => window.got.length > 0);
    await dash.waitForFunction(() => document.getElementById('log').textContent.includes('test-event'));
    await dash.waitForTimeout(1500);  // let the rate chart draw a few points
    await dash.screenshot({ path: shot });
    return {
      got: await sub.evaluate(() => window.got),
      connections: Number(await dash.textContent('#connections')),
      channels: await dash.textContent('#channels'),
      log: (await dash.textContent('#log')).slice(0, 2000),
      state: await sub.evaluate(() => window.pw.state),
    };
  } finally {
    await browser.close();
  }
}

// The apps page: sign in with the admin token, see the app with a live connection, create,
// disable, rotate; returns what the page showed and every URL it requested.
async function apps(base, adminToken, shot) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
    const urls = [];
    const dialogs = [];
    page.on('request', (r) => urls.push(r.url()));
    page.on('dialog', (d) => { dialogs.push(d.message()); d.accept(); });
    const row = (id) => `#apps tr[data-id="${id}"]`;
    const rowText = (id) => page.textContent(row(id));
    await page.goto(base + '/dashboard/apps');
    await page.fill('#token', 'not-the-token');
    await page.click('#login-form button');
    await page.waitForSelector('#error:not([hidden])');
    const loginError = await page.textContent('#error-text');
    await page.fill('#token', adminToken);
    await page.click('#login-form button');
    await page.waitForSelector(row('app-id'));
    const errorAfterLogin = await page.isVisible('#error');
    await page.waitForFunction(
      (sel) => document.querySelector(sel + ' td.connections').textContent === '1', row('app-id'));
    const appRow = await rowText('app-id');
    // a create that the API refuses shows its error message
    await page.fill('#c-id', 'app-id');
    await page.click('#create button');
    await page.waitForSelector('#error:not([hidden])');
    const createError = await page.textContent('#error-text');
    await page.fill('#c-id', 'made-in-browser');
    await page.fill('#c-max', '50');
    await page.click('#create button');
    await page.waitForSelector(row('made-in-browser'));
    const errorAfterCreate = await page.isVisible('#error');
    const created = await page.textContent('#notice-text');
    await page.click(`${row('made-in-browser')} button[data-act="disable"]`);
    await page.waitForSelector(`${row('made-in-browser')} button[data-act="enable"]`);
    const disabledRow = await rowText('made-in-browser');
    await page.click(`${row('app-id')} button[data-act="rotate"]`);
    await page.waitForFunction(() => document.getElementById('notice-text').textContent.includes('New secret'));
    const notice = await page.textContent('#notice-text');
    const newSecret = await page.textContent('#new-secret');
    await page.waitForTimeout(2500);  // one more periodic refresh: the table stays as it is
    const afterRefresh = { app: await rowText('app-id'), made: await rowText('made-in-browser') };
    await page.screenshot({ path: shot });
    const storage = await page.evaluate(() => ({
      local: localStorage.length, cookie: document.cookie, session: Object.keys(sessionStorage) }));
    return { loginError, errorAfterLogin, appRow, createError, errorAfterCreate, created,
             disabledRow, notice, newSecret, afterRefresh, dialogs, storage, urls };
  } finally {
    await browser.close();
  }
}

// Subscribes, says so, then waits until an event arrives again after the server restarted.
async function reconnect(base) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  try {
    const page = await browser.newPage();
    await page.goto(base + '/dashboard');
    await page.setContent('<html><body><script src="' + base + '/pushwire.js"></script></body></html>');
    await page.evaluate((b) => {
      window.states = []; window.got = [];
      window.pw = new Pushwire({ url: b.replace(/^http/, 'ws'), key: 'app-key' });
      window.pw.bind('state_change', (s) => window.states.push(s.current));
      window.pw.subscribe('restart-channel').bind('after', (d) => window.got.push(d));
    }, base);
    await page.waitForFunction(() => window.pw.channel('restart-channel').subscribed);
    const firstSocket = await page.evaluate(() => window.pw.socket_id);
    process.stdout.write(JSON.stringify({ stage: 'subscribed' }) + '\n');
    await page.waitForFunction(() => window.got.length > 0, null, { timeout: 60000 });
    return { got: await page.evaluate(() => window.got), states: await page.evaluate(() => window.states),
             changedSocket: firstSocket !== await page.evaluate(() => window.pw.socket_id) };
  } finally {
    await browser.close();
  }
}

// A page with the server's /pushwire.js, driven by the test: each stdin line is
// {"op": "eval" | "wait", "js": "<expression>", "timeout": ms}; "wait" first waits until the
// expression is truthy. Each is answered with one stdout line, {"ok": value} or {"error": ...}.
// The page stays open across server restarts (it was loaded before them); EOF ends it.
async function drive(base) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  try {
    const page = await browser.newPage();
    page.on('console', (m) => console.error('page: ' + m.text()));
    await page.goto(base + '/dashboard');
    await page.setContent('<html><body><script src="' + base + '/pushwire.js"></script></body></html>');
    await page.waitForFunction(() => typeof window.Pushwire === 'function');
    process.stdout.write(JSON.stringify({ ok: 'ready' }) + '\n');
    const lines = require('readline').createInterface({ input: process.stdin });
    for await (const line of lines) {
      const { op, js, timeout } = JSON.parse(line);
      let reply;
      try {
        if (op === 'wait') await page.waitForFunction(js, null, { timeout: timeout || 30000 });
        reply = { ok: await page.evaluate(js) };
      } catch (e) {
        reply = { error: String((e && e.stack) || e) };
      }
      process.stdout.write(JSON.stringify(reply) + '\n');
    }
    return { done: true };
  } finally {
    await browser.close();
  }
}

(async () => {
  const [cmd, ...rest] = process.argv.slice(2);
  const result = cmd === 'chat' ? await chat(...rest)
    : cmd === 'reconnect' ? await reconnect(...rest)
    : cmd === 'drive' ? await drive(...rest)
    : cmd === 'apps' ? await apps(...rest) : await dashboard(...rest);
  process.stdout.write(JSON.stringify(result) + '\n');
})().catch((e) => { console.error(e); process.exit(1); });
