// Reads the JSON data block with textContent (never innerHTML with report text) and
// builds DOM nodes with textContent, so no label or token can become markup.
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
  // Prompts in pages (all of them show without scripts).
  var pager=document.querySelector('#prompts .pager');
  if(pager){
    var pages=document.querySelectorAll('#prompts .prompt[data-page]');
    var last=pages.length?parseInt(pages[pages.length-1].getAttribute('data-page'),10):0;
    var current=0,label=pager.querySelector('.page-of');
    var show=function(page){
      current=Math.max(0,Math.min(last,page));
      pages.forEach(function(p){p.hidden=parseInt(p.getAttribute('data-page'),10)!==current;});
      label.textContent='page '+(current+1)+' of '+(last+1);
    };
    pager.addEventListener('click',function(ev){
      var step=ev.target.getAttribute&&ev.target.getAttribute('data-step');
      if(step)show(current+parseInt(step,10));
    });
    show(0);
  }
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
