"""The report page's inline CSS and JavaScript (no CDN: the page must open offline)."""

PAGE_CSS = """
:root{--fg:#1d1d1f;--muted:#6b6b70;--line:#ddd;--accent:#c2410c;--bg:#fff;--card:#fafafa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:.5rem 1.25rem;z-index:2}
header h1{font-size:1.1rem;margin:.2rem 0}
nav a{margin-right:1rem;color:var(--accent);text-decoration:none;font-size:.9rem}
main{padding:0 1.25rem 3rem;max-width:1200px}
h2{border-bottom:2px solid var(--line);padding-bottom:.2rem;margin-top:2rem}
h3{margin:1rem 0 .4rem}h4{margin:.8rem 0 .3rem;font-size:.9rem}
.muted{color:var(--muted)}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.5rem 0}
.kv dt{color:var(--muted)}.kv dd{margin:0}
table{border-collapse:collapse;margin:.5rem 0;width:100%}
th,td{border-bottom:1px solid var(--line);padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f5;font-weight:600}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}
.tok{border-radius:2px;cursor:default}
.tok[data-feats]{cursor:pointer}
.tok.pinned{outline:2px solid var(--accent)}
.prompt{border:1px solid var(--line);border-radius:6px;padding:.4rem .6rem;margin:.4rem 0}
.pid{font-size:.75rem;color:var(--muted)}
.badge{background:#e0e7ff;border-radius:3px;padding:0 .3rem;margin-left:.4rem}
.panel{position:sticky;top:3.2rem;background:#fff7ed;border:1px solid #fdba74;border-radius:6px;padding:.5rem .75rem;margin:.5rem 0;z-index:1}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.5rem 1rem;margin:1rem 0}
.cols{display:grid;grid-template-columns:2fr 1fr;gap:1rem}
.ex{border-bottom:1px dashed var(--line);padding:.2rem 0}
.exmeta{display:block;font-size:.72rem;color:var(--muted)}
.hist rect{fill:var(--accent)}.hist text{font-size:9px;fill:var(--muted)}
.gen{white-space:pre-wrap}
.error{background:#fee2e2;border:1px solid #fca5a5;border-radius:6px;padding:.5rem;margin:.5rem 0}
.status-failed{color:#b91c1c;font-weight:600}.status-succeeded{color:#15803d;font-weight:600}
code{background:#f1f1f4;border-radius:3px;padding:0 .2rem;white-space:pre}
pre{background:#f6f6f8;padding:.6rem;overflow:auto;font-size:.8rem}
@media (max-width:800px){.cols{grid-template-columns:1fr}}
"""

# Reads the JSON data block with textContent (never innerHTML with report text) and
# builds DOM nodes with textContent, so no label or token can become markup.
PAGE_JS = """
(function(){
  // Marks the page as scripted (tests check it: scripts do run, injected ones do not).
  document.documentElement.setAttribute('data-saeflow-ready','1');
  var node=document.getElementById('saeflow-data');
  var data=node?JSON.parse(node.textContent):{labels:{},max:{}};
  var panel=document.getElementById('token-panel');
  function parse(attr){
    return (attr||'').split('|').filter(Boolean).map(function(p){
      var i=p.indexOf(':');return {id:p.slice(0,i),act:parseFloat(p.slice(i+1))};
    });
  }
  function showToken(el){
    if(!panel)return;
    document.querySelectorAll('.tok.pinned').forEach(function(t){t.classList.remove('pinned');});
    el.classList.add('pinned');
    panel.hidden=false;panel.textContent='';
    var h=document.createElement('strong');h.textContent='Token '+JSON.stringify(el.textContent);
    panel.appendChild(h);
    var list=document.createElement('ol');
    parse(el.getAttribute('data-feats')).sort(function(a,b){return b.act-a.act;}).forEach(function(f){
      var li=document.createElement('li');
      var a=document.createElement('a');a.href='#feature-'+f.id;a.textContent='#'+f.id;
      li.appendChild(a);
      li.appendChild(document.createTextNode(' '+(data.labels[f.id]||'')+' = '+f.act));
      list.appendChild(li);
    });
    panel.appendChild(list);
  }
  document.addEventListener('click',function(ev){
    var el=ev.target.closest?ev.target.closest('.tok[data-feats]'):null;
    if(el)showToken(el);
  });
  document.addEventListener('keydown',function(ev){
    if(ev.key==='Enter'&&ev.target.matches&&ev.target.matches('.tok[data-feats]'))showToken(ev.target);
  });
  var select=document.getElementById('colour-by');
  var original=new Map();
  if(select){select.addEventListener('change',function(){
    var fid=select.value;
    document.querySelectorAll('#prompts .tok').forEach(function(t){
      if(!original.has(t))original.set(t,t.style.background);
      if(!fid){t.style.background=original.get(t);return;}
      var top=parseFloat(data.max[fid]||0),act=0;
      parse(t.getAttribute('data-feats')).forEach(function(f){if(f.id===fid)act=f.act;});
      var alpha=top>0?Math.min(1,act/top):0;
      t.style.background=alpha>0?'rgba(37,99,235,'+alpha.toFixed(2)+')':'';
    });
  });}
})();
"""
