// Draws every <div class="figure" data-figure="{data, layout}"> with plotly.js; a click on a
// point whose customdata is a structure id opens that structure.
document.addEventListener("DOMContentLoaded", () => {
  for (const element of document.querySelectorAll(".figure[data-figure]")) {
    const figure = JSON.parse(element.dataset.figure);
    Plotly.newPlot(element, figure.data, figure.layout, {responsive: true, displaylogo: false})
      .then(() => element.classList.add("drawn"));
    element.on("plotly_click", (event) => {
      const id = event.points[0].customdata;
      if (Number.isInteger(id)) window.location.href = `/structures/${id}`;
    });
  }
});
