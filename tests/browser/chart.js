// The dashboard's rate chart with live traffic, in Debian's Chromium (playwright-core):
//   node chart.js <serverUrl> <appSecret> <screenshot.png> <seconds>
// A page keeps a Pusher socket busy (a subscription, a ping a second: frames in and out)
// while the dashboard's trigger form sends an event every ~1.5 s (every 0.3 s in the middle
// third of the run: a burst); prints what the chart shows.
'use strict';
const { chromium } = require('playwright-core');

const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function chart(base, secret, shot, seconds) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  try {
    const sub = await browser.newPage();
    await sub.goto(base + '/dashboard');  // same origin for the socket below
    await sub.evaluate((url) => {
      window.got = 0;
      const ws = new WebSocket(url + '/app/app-key?protocol=7&client=js&version=1');
      ws.onopen = () => ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'chart-channel' } }));
      ws.onmessage = (e) => { if (JSON.parse(e.data).event === 'test-event') window.got += 1; };
      setInterval(() => ws.send(JSON.stringify({ event: 'pusher:ping', data: {} })), 1000);
    }, base.replace(/^http/, 'ws'));
    const dash = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await dash.goto(base + '/dashboard');
    await dash.fill('#app', 'app-id');
    await dash.fill('#token', secret);
    await dash.click('#login-form button');
    await dash.waitForSelector('#main:not([hidden])');
    await dash.fill('#t-channel', 'chart-channel');
    const begin = Date.now(), span = Number(seconds) * 1000;
    while (Date.now() < begin + span) {
      await dash.click('#trigger button');
      const third = Math.floor((Date.now() - begin) / span * 3);
      await dash.waitForTimeout(third === 1 ? 300 : 1500);
    }
    await dash.waitForTimeout(1200);  // one more stats poll draws the last interval
    await dash.screenshot({ path: shot });
    const drawn = await dash.evaluate(() => {
      const svg = document.getElementById('chart');
      const dots = (name) => [...svg.querySelectorAll('circle.' + name)].map((c) => Number(c.getAttribute('cy')));
      const axis = svg.querySelector('line.axis[x1="52"]');
      return {
        texts: [...svg.querySelectorAll('text')].map((t) => t.textContent),
        lines: [...svg.querySelectorAll('path.line')].map((p) => p.getAttribute('data-series')),
        in: dots('in'),
        out: dots('out'),
        baseline: Number(axis.getAttribute('y2')),
        max: Number(svg.getAttribute('data-max')),
        rateIn: Number(document.getElementById('rate-in').textContent),
        rateOut: Number(document.getElementById('rate-out').textContent),
        tips: [...svg.querySelectorAll('circle title')].slice(-2).map((t) => t.textContent),
      };
    });
    drawn.got = await sub.evaluate(() => window.got);
    drawn.t_ms = await dash.evaluate(async () => {  // the server's sample times
      const token = JSON.parse(sessionStorage.getItem('pushwire-dash')).token;
      const r = await fetch('/dashboard/api/stats?app=app-id', { headers: { Authorization: 'Bearer ' + token } });
      return (await r.json()).rates.t_ms;
    });
    return drawn;
  } finally {
    await browser.close();
  }
}

(async () => {
  const result = await chart(...process.argv.slice(2));
  process.stdout.write(JSON.stringify(result) + '\n');
})().catch((e) => { console.error(e); process.exit(1); });
