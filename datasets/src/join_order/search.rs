//! The cheapest order of a group of inner joins, by dynamic programming over subsets.
//!
//! A [`JoinGraph`] has a vertex per joined plan (its estimated rows), a class per set of
//! columns made equal (any two of whose plans it joins), an edge per other pair of plans joined
//! on equal keys (the share of pairs the keys keep); conditions over more plans than two are
//! weighed in once all their plans are joined. The rows of a join of any set of
//! plans are then the product of their rows and of the shares of the conditions among them,
//! whatever the order (so the estimates of different orders agree). [`JoinGraph::best`] tries
//! every way of building each connected set from two connected, joined halves (DPsub, as in
//! the System R and DuckDB optimizers; bushy trees included, cross products not), smallest
//! sets first, and keeps the cheapest: a join costs its output rows plus the rows of its
//! smaller input, which the hash join builds its table from. That side is put on the left,
//! where DataFusion's hash join builds.

/// The most plans one group's order is searched for (3^12 subset pairs).
pub(super) const MOST_PLANS: usize = 12;

/// An order of joins: which plans are joined with which, and which side is the left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Shape {
    /// The plan of this index.
    Plan(usize),
    /// A join of the left and right shapes.
    Join(Box<Shape>, Box<Shape>),
}

impl Shape {
    /// The set of plans this shape joins, as bits.
    pub(super) fn plans(&self) -> u32 {
        match self {
            Shape::Plan(i) => 1 << i,
            Shape::Join(left, right) => left.plans() | right.plans(),
        }
    }
}

/// Joined plans and the conditions between them (see the module doc).
#[derive(Debug, Default)]
pub(super) struct JoinGraph {
    /// Each plan's estimated rows.
    pub rows: Vec<f64>,
    /// Equal keys between two plans: `(plan, plan, share kept)`.
    pub edges: Vec<(usize, usize, f64)>,
    /// Conditions over other sets of plans: `(plans as bits, share kept)`.
    pub others: Vec<(u32, f64)>,
    /// Classes of columns made equal: per column, `(plan, distinct values there, distinct
    /// values in its table)`. Any two plans of a class are joined by it.
    pub classes: Vec<Vec<(usize, f64, f64)>>,
}

/// The best way found to join one set of plans.
#[derive(Debug, Clone, Copy)]
struct Best {
    cost: f64,
    /// The set of the left half (`0` for a single plan).
    left: u32,
}

impl JoinGraph {
    /// Estimated rows of the join of the set `plans`.
    pub(super) fn rows_of(&self, plans: u32) -> f64 {
        let mut rows: f64 = (0..self.rows.len())
            .filter(|i| plans & (1 << i) != 0)
            .map(|i| self.rows[i])
            .product();
        for &(a, b, share) in &self.edges {
            if plans & (1 << a) != 0 && plans & (1 << b) != 0 {
                rows *= share;
            }
        }
        for &(set, share) in &self.others {
            if set & plans == set {
                rows *= share;
            }
        }
        for class in &self.classes {
            rows *= class_share(class, plans);
        }
        rows.max(1.0)
    }

    /// Whether an edge or a class joins a plan of `a` with one of `b`.
    fn connected(&self, a: u32, b: u32) -> bool {
        let edge = self.edges.iter().any(|&(x, y, _)| {
            let (x, y) = (1 << x, 1 << y);
            (a & x != 0 && b & y != 0) || (a & y != 0 && b & x != 0)
        });
        let class = self.classes.iter().any(|class| {
            class.iter().any(|(plan, ..)| a & (1 << plan) != 0)
                && class.iter().any(|(plan, ..)| b & (1 << plan) != 0)
        });
        edge || class
    }

    /// The cost of joining in `shape`'s order.
    pub(super) fn cost(&self, shape: &Shape) -> f64 {
        match shape {
            Shape::Plan(_) => 0.0,
            Shape::Join(left, right) => {
                self.cost(left) + self.cost(right) + self.join_cost(left.plans(), right.plans())
            }
        }
    }

    /// The cost of one join of the sets `a` and `b`, each joined already.
    fn join_cost(&self, a: u32, b: u32) -> f64 {
        self.rows_of(a | b) + self.rows_of(a).min(self.rows_of(b))
    }

    /// The cheapest order of joining all plans; `None` if there are more than [`MOST_PLANS`],
    /// or they are not all connected by equal keys.
    pub(super) fn best(&self) -> Option<Shape> {
        let n = self.rows.len();
        if n == 0 || n > MOST_PLANS {
            return None;
        }
        let all = (1u32 << n) - 1;
        let mut best: Vec<Option<Best>> = vec![None; 1 << n];
        for i in 0..n {
            best[1 << i] = Some(Best { cost: 0.0, left: 0 });
        }
        // Every subset of a set is a smaller number than the set.
        for set in 1..=all {
            if set.count_ones() < 2 {
                continue;
            }
            let lowest = set & set.wrapping_neg();
            let mut half = (set - 1) & set;
            while half > 0 {
                let other = set ^ half;
                // Each split once: the half holding the set's lowest plan.
                if half & lowest != 0
                    && let (Some(a), Some(b)) = (best[half as usize], best[other as usize])
                    && self.connected(half, other)
                {
                    let cost = a.cost + b.cost + self.join_cost(half, other);
                    if best[set as usize].is_none_or(|current| cost < current.cost) {
                        best[set as usize] = Some(Best { cost, left: half });
                    }
                }
                half = (half - 1) & set;
            }
        }
        best[all as usize]?;
        Some(self.shape(&best, all))
    }

    /// The shape of the best join of `set`, its smaller half on the left.
    fn shape(&self, best: &[Option<Best>], set: u32) -> Shape {
        let Some(Best { left, .. }) = best[set as usize] else {
            unreachable!("only sets joined are asked for");
        };
        if left == 0 {
            return Shape::Plan(set.trailing_zeros() as usize);
        }
        let right = set ^ left;
        let (left, right) = match self.rows_of(right) < self.rows_of(left) {
            true => (right, left),
            false => (left, right),
        };
        Shape::Join(
            Box::new(self.shape(best, left)),
            Box::new(self.shape(best, right)),
        )
    }
}

/// The share of rows a class of equal columns keeps among the set `plans`: joining k columns
/// on one value divides by the distinct values of all but the one with fewest (two columns: by
/// the larger number). A column's distinct values count at most as many as the fewest any of
/// their tables holds (a foreign key takes no more values than the table it points to has
/// keys: `l_orderkey` has no more than `orders` has rows, though its range would allow four
/// times as many).
fn class_share(class: &[(usize, f64, f64)], plans: u32) -> f64 {
    let within = || class.iter().filter(|(plan, ..)| plans & (1 << plan) != 0);
    let fewest_in_tables = within()
        .map(|(_, _, table)| *table)
        .fold(f64::INFINITY, f64::min);
    let mut distinct: Vec<f64> = within()
        .map(|(_, here, _)| here.min(fewest_in_tables).max(1.0))
        .collect();
    distinct.sort_by(f64::total_cmp);
    distinct.iter().skip(1).map(|d| 1.0 / d).product()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A star: a large fact table joined with three dimensions, one of them filtered to a few
    /// rows, itself joined with a tiny filtered table; written fact-first.
    fn star() -> JoinGraph {
        JoinGraph {
            rows: vec![6e6, 1.5e6, 1e4, 5.0, 1e3],
            edges: vec![
                (0, 1, 1.0 / 1.5e6),
                (0, 2, 1e-4),
                (2, 3, 1.0 / 25.0),
                (1, 4, 1e-3),
            ],
            ..Default::default()
        }
    }

    /// The cheapest order, checked against every order by brute force.
    fn brute_force(graph: &JoinGraph, set: u32) -> Option<f64> {
        if set.count_ones() == 1 {
            return Some(0.0);
        }
        let mut cheapest: Option<f64> = None;
        let mut half = (set - 1) & set;
        while half > 0 {
            let other = set ^ half;
            if graph.connected(half, other)
                && let (Some(a), Some(b)) = (brute_force(graph, half), brute_force(graph, other))
            {
                let cost = a + b + graph.join_cost(half, other);
                cheapest = Some(cheapest.map_or(cost, |c: f64| c.min(cost)));
            }
            half = (half - 1) & set;
        }
        cheapest
    }

    #[test]
    fn the_best_order_is_the_cheapest_of_all_and_joins_the_filtered_dimension_first() {
        let graph = star();
        let best = graph.best().unwrap();
        assert_eq!(best.plans(), 0b11111);
        let cheapest = brute_force(&graph, 0b11111).unwrap();
        assert!((graph.cost(&best) - cheapest).abs() <= cheapest * 1e-9);
        // The fact table meets the filtered dimension (through its own dimension) before
        // the large one.
        let written = Shape::Join(
            Box::new(Shape::Join(
                Box::new(Shape::Join(
                    Box::new(Shape::Join(
                        Box::new(Shape::Plan(0)),
                        Box::new(Shape::Plan(1)),
                    )),
                    Box::new(Shape::Plan(2)),
                )),
                Box::new(Shape::Plan(3)),
            )),
            Box::new(Shape::Plan(4)),
        );
        assert!(graph.cost(&best) < graph.cost(&written));
    }

    #[test]
    fn rows_of_a_set_do_not_depend_on_the_order() {
        let graph = JoinGraph {
            others: vec![(0b1010, 0.5)],
            ..star()
        };
        let rows = graph.rows_of(0b1110);
        let by_hand = 1.5e6 * 1e4 * 5.0 / 25.0 * 0.5;
        assert!((rows - by_hand).abs() < 1e-6 * by_hand);
    }

    #[test]
    fn a_class_of_equal_columns_joins_plans_no_condition_names_together() {
        // customer, supplier and a filtered nation, all on one nation key.
        let graph = JoinGraph {
            rows: vec![150_000.0, 10_000.0, 5.0],
            classes: vec![vec![(0, 25.0, 25.0), (1, 25.0, 25.0), (2, 5.0, 25.0)]],
            ..Default::default()
        };
        assert!(graph.connected(0b001, 0b100));
        let customers_of_the_nations = graph.rows_of(0b101);
        assert!((customers_of_the_nations - 150_000.0 * 5.0 / 25.0).abs() < 1e-6);
        // Three on one value: divided by all but the fewest distinct values.
        let all = graph.rows_of(0b111);
        assert!((all - 150_000.0 * 10_000.0 * 5.0 / 25.0 / 25.0).abs() < 1e-3);
        assert_eq!(graph.best().map(|b| b.plans()), Some(0b111));
    }

    #[test]
    fn unconnected_plans_have_no_order() {
        let graph = JoinGraph {
            rows: vec![10.0, 20.0, 30.0],
            edges: vec![(0, 1, 0.1)],
            ..Default::default()
        };
        assert_eq!(graph.best(), None);
    }
}
